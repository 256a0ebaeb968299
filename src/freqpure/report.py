"""A self-contained HTML report of evaluation runs, a demo, or a frequency analysis, written for a reader.

:func:`write_report` reads one or more directories and renders ``templates/report.html.j2`` (Jinja2,
autoescaped) into one HTML file: inline CSS, every image a base64 PNG ``data:`` URI, no scripts, a strict
Content-Security-Policy (anything external shows up as a console error in a browser).

The page: what was run (defence, plan, attack settings in words), the accuracy table with 95%
intervals and a plot of it, the paired comparison (exact McNemar) of runs that share test images, a
short generated reading, the example grid with a legend, one section per defence with only what applies
to it (no purifier settings for the undefended run), the frequency analysis when present, and the raw
configuration folded away at the end.

Accepted directories (detected in this order):

* **demo dir** — ``results.json`` written by ``freqpure demo`` (:class:`~freqpure.evaluation.demo_summary.DemoSummary`)
  and one run dir per defence (``none/``, ``diffpure/``, ``freqpure/``), optionally ``grid.png``;
* **run dir** — ``config.yaml``, ``results.json`` (any schema version, read with
  :func:`freqpure.evaluation.results.read_results`) and ``examples.npz``; ``samples.jsonl`` when present
  (for the paired comparison);
* **analysis dir** — ``analysis.json`` (+ the PNG plots it lists), as written by ``freqpure analyze``.

Several run dirs may be given at once (a comparison). A missing or unreadable file raises
``FileNotFoundError`` / ``ValueError`` naming the file.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from freqpure._fileio import write_text_atomic
from freqpure.errors import NotFoundError, UsageError
from freqpure.evaluation.results import Results, SampleRecord, read_run
from freqpure.spectral import centred_spectrum, wrap_phase

__all__ = ["write_report", "render_html", "ReportInputs", "RunData", "load_run", "DEFENCE_ORDER", "REPORT_NAME",
           "MAX_BYTES", "CSP", "is_report"]

REPORT_NAME = "report.html"
DEFENCE_ORDER = ("none", "diffpure", "freqpure")
TITLES = {"none": "no defence", "diffpure": "DiffPure", "freqpure": "FreqPure"}
RUN_FILES = ("config.yaml", "results.json", "examples.npz")
MAX_BYTES = 2_000_000  # the page stays under 2 MB: fewer grid rows and spectra are shown when it would not
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# Reading the inputs (every error names its file)
# ---------------------------------------------------------------------------------------------
def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise NotFoundError(f"{path}: file not found ({what})")
    return path


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read as UTF-8 text ({err})") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err})") from None


def _read_yaml(path: Path) -> tuple[str, Any]:
    text = _read_text(path)
    try:
        return text, yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: not valid YAML ({err})") from None


def _read_jsonl(path: Path) -> list[Any]:
    records = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}: line {number} is not valid JSON ({err})") from None
    return records


def _read_png(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UsageError(f"{path}: cannot read ({err})") from None
    if not data.startswith(_PNG_MAGIC):
        raise UsageError(f"{path}: not a PNG file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Exception as err:  # PIL raises many exception types for corrupt files
        raise UsageError(f"{path}: corrupt PNG ({err})") from None
    return data


def _read_examples(path: Path) -> dict[str, np.ndarray]:
    """Load and validate ``examples.npz`` (see the module docstring)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except ValueError as err:
        raise UsageError(f"{path}: cannot read ({err}); arrays must be numeric or str, not objects") from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise UsageError(f"{path}: not a readable .npz archive ({err})") from None
    missing = [k for k in ("clean", "adversarial", "labels") if k not in data]
    if missing:
        raise UsageError(f"{path}: missing key(s) {missing}; has {sorted(data)}")
    clean = data["clean"]
    if clean.ndim != 4 or clean.shape[0] == 0:
        raise UsageError(f"{path}: 'clean' must be [N, C, H, W], got shape {clean.shape}")
    n = clean.shape[0]
    for key in ("adversarial", "purified"):
        if key in data and data[key].shape != clean.shape:
            raise UsageError(f"{path}: {key!r} has shape {data[key].shape}, 'clean' has {clean.shape}")
    for key in ("clean", "adversarial", "purified"):
        if key in data:
            if not np.issubdtype(data[key].dtype, np.floating) or not np.isfinite(data[key]).all():
                raise UsageError(f"{path}: {key!r} must be finite floats in [0, 1], got {data[key].dtype}")
    for key in ("labels", "pred_clean", "pred_adversarial", "pred_purified"):
        if key in data:
            arr = data[key]
            if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
                raise UsageError(f"{path}: {key!r} must be int [N={n}], got {arr.dtype} {arr.shape}")
    if "class_names" in data:
        names = data["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise UsageError(f"{path}: 'class_names' must be a 1-D str array, got {names.dtype} {names.shape}")
    return data


@dataclass
class AnalysisData:
    """``analysis.json`` and the PNG plots it lists (name → bytes)."""

    path: Path
    data: dict[str, Any]
    plots: dict[str, bytes] = field(default_factory=dict)


def _load_analysis(directory: Path) -> AnalysisData | None:
    path = directory / "analysis.json"
    if not path.exists():
        return None
    data = _read_json(path)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object at the top level")
    plots: dict[str, bytes] = {}
    listed = data.get("plots") or {}
    if not isinstance(listed, dict):
        raise UsageError(f"{path}: 'plots' must map names to PNG file names")
    for name, rel in listed.items():
        file = directory / str(rel)
        if Path(str(rel)).is_absolute() or ".." in Path(str(rel)).parts:
            raise UsageError(f"{path}: plot {name!r} must be a file name inside the directory, got {rel!r}")
        plots[str(name)] = _read_png(_require(file, f"plot {name!r} listed in {path.name}"))
    return AnalysisData(path, data, plots)


@dataclass
class RunData:
    """One evaluation run directory, read and validated."""

    path: Path
    results: Results
    config_text: str
    examples: dict[str, np.ndarray] | None
    samples: dict[int, SampleRecord] | None = None

    @property
    def method(self) -> str:
        return self.results.defence

    @property
    def title(self) -> str:
        """``DiffPure`` / ``FreqPure`` / ``no defence``, plus the run name when that is not just the method."""
        base = TITLES.get(self.method, self.method)
        name = self.results.name
        plain = {self.method, f"demo-{self.method}", self.path.name}
        return base if name in plain and self.path.name in (self.method, name) else f"{base} ({name})"


def load_run(directory: str | Path) -> RunData:
    """Read a run directory: ``results.json`` (required, any schema version), ``config.yaml`` (else the config
    stored in results.json is shown), ``examples.npz`` (else no images) and ``samples.jsonl`` (else no
    paired comparison). A file that exists but cannot be read is an error naming it."""
    directory = Path(directory)
    _require(directory / "results.json", "an evaluation run dir holds results.json")
    results, samples = read_run(directory)  # records validated and checked against results.json
    config_path = directory / "config.yaml"
    if config_path.exists():
        config_text, _ = _read_yaml(config_path)
    else:
        config_text = "# from results.json (no config.yaml in the run dir)\n" + yaml.safe_dump(results.config,
                                                                                            sort_keys=False)
    examples_path = directory / "examples.npz"
    examples = _read_examples(examples_path) if examples_path.exists() else None
    return RunData(directory, results, config_text, examples, samples)


def _is_run_dir(directory: Path) -> bool:
    return any((directory / f).exists() for f in RUN_FILES)


def _sub_runs(directory: Path) -> list[Path]:
    subs = [p for p in directory.iterdir() if p.is_dir() and _is_run_dir(p)]
    rank = {n: i for i, n in enumerate(DEFENCE_ORDER)}
    return sorted(subs, key=lambda p: (rank.get(p.name, len(rank)), p.name))


@dataclass
class ReportInputs:
    """Everything a report shows: ``kind`` is ``"demo"``, ``"run"``, ``"runs"`` or ``"analysis"``."""

    kind: str
    paths: list[Path]
    runs: list[RunData]
    demo: Any = None  # DemoSummary of a demo dir
    grid_png: bytes | None = None  # demo's grid.png
    analysis: AnalysisData | None = None

    @classmethod
    def read(cls, directories: str | Path | Sequence[str | Path]) -> ReportInputs:
        if isinstance(directories, str | Path):
            directories = [directories]
        paths = [Path(d) for d in directories]
        if not paths:
            raise UsageError("no directory given")
        for d in paths:
            if not d.is_dir():
                raise NotFoundError(f"{d}: not a directory (expected a run, demo or analysis dir)")
        if len(paths) > 1:
            return cls("runs", paths, [load_run(p) for p in paths])
        directory = paths[0]
        subs = _sub_runs(directory)
        analysis = _load_analysis(directory)
        if subs:
            from freqpure.evaluation.demo_summary import DemoSummary

            summary_path = _require(directory / "results.json", "a demo dir holds a top-level results.json")
            demo = DemoSummary.from_dict(_read_json(summary_path), str(summary_path))
            grid = directory / "grid.png"
            return cls("demo", paths, [load_run(p) for p in subs], demo, _read_png(grid) if grid.exists() else None,
                       analysis)
        if _is_run_dir(directory):
            return cls("run", paths, [load_run(directory)], analysis=analysis)
        if analysis is not None:
            return cls("analysis", paths, [], analysis=analysis)
        raise NotFoundError(
            f"{directory}: nothing to report: expected config.yaml, results.json and examples.npz (a run dir), "
            f"sub-directories {', '.join(DEFENCE_ORDER)} holding run dirs (a demo dir), or analysis.json"
        )


# ---------------------------------------------------------------------------------------------
# Images → PNG data URIs
# ---------------------------------------------------------------------------------------------
def png_bytes(image: np.ndarray) -> bytes:
    """uint8 ``[H, W]`` or ``[H, W, 3]`` → PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _display_size(h: int, w: int, target: int = 96, largest: int = 192) -> tuple[int, int]:
    if max(h, w) > largest:
        scale = largest / max(h, w)
        return max(1, round(w * scale)), max(1, round(h * scale))
    k = max(1, target // max(h, w))
    return w * k, h * k


def image_png(chw: np.ndarray, target: int = 96) -> bytes:
    """A float image ``[C, H, W]`` in [0, 1] → PNG (RGB for C = 3, else the channel mean in grey),
    upscaled (nearest) to about ``target`` px, or shrunk (Lanczos) when larger than 192 px."""
    arr = np.clip(np.asarray(chw, dtype=np.float64), 0, 1)
    arr = (arr * 255 + 0.5).astype(np.uint8)
    arr = arr[:3].transpose(1, 2, 0) if arr.shape[0] == 3 else arr.mean(axis=0).astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(arr))
    size = _display_size(arr.shape[0], arr.shape[1], target)
    resample = Image.NEAREST if size[0] >= arr.shape[1] else Image.LANCZOS
    buf = io.BytesIO()
    img.resize(size, resample).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# Anchor colours of two colour maps (interpolated linearly): a perceptual dark→bright one for
# magnitudes, and a cyclic hue wheel for phases.
_SEQUENTIAL = np.array([[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]],
                       dtype=np.float64)
_CYCLIC = np.array([[230, 60, 60], [230, 200, 60], [60, 190, 90], [60, 170, 220], [110, 80, 220], [220, 70, 190],
                    [230, 60, 60]], dtype=np.float64)


def colour_map(values: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Map ``values`` ``[H, W]`` in [0, 1] to uint8 RGB ``[H, W, 3]`` through piecewise-linear ``anchors``."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0, 1) * (len(anchors) - 1)
    lo = np.minimum(v.astype(np.int64), len(anchors) - 2)
    frac = (v - lo)[..., None]
    rgb = anchors[lo] * (1 - frac) + anchors[lo + 1] * frac
    return (rgb + 0.5).astype(np.uint8)


def _map_png(values: np.ndarray, anchors: np.ndarray, target: int = 96) -> bytes:
    rgb = colour_map(values, anchors).transpose(2, 0, 1).astype(np.float64) / 255
    return image_png(rgb, target)


def _luminance(x: np.ndarray) -> np.ndarray:
    """``[N, C, H, W]`` → ``[N, H, W]`` (Rec. 601 luma for RGB, the channel mean otherwise)."""
    if x.shape[1] == 3:
        return np.tensordot(np.array([0.299, 0.587, 0.114]), x, axes=([0], [1]))
    return x.mean(axis=1)


def spectra(images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Centred log-amplitude ``log(1 + |F|)`` and phase (rad) of the luminance of each ``[C, H, W]`` image."""
    lum = torch.from_numpy(_luminance(np.stack(images).astype(np.float64)))
    spec = centred_spectrum(lum)
    return list(zip(torch.log1p(spec.abs()).numpy(), torch.angle(spec).numpy()))


# ---------------------------------------------------------------------------------------------
# Words
# ---------------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _interval(ci: tuple[float, float]) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _purifier_settings(p: dict[str, Any]) -> dict[str, Any]:
    """The purifier section with the variant's keys (mode, reference, step rule, grid, variance) filled in:
    a saved config keeps them ``null`` when they are as its variant says."""
    from freqpure.config import PurifierConfig, from_dict

    if p.get("method") == "none":
        return p
    return {**p, "variant": p.get("variant") or "paper", **from_dict(PurifierConfig, p, "purifier").effective()}


def defence_in_words(results: Results) -> str:
    """The defence as a sentence fragment, e.g. ``DiffPure with cifar10-ddpm-small, plan 100:5 (...)``."""
    cfg = results.config
    p, d = _purifier_settings(cfg["purifier"]), cfg["defence"]
    if p["method"] == "none":
        return f"the classifier {cfg['classifier']['name']} alone, attacked directly"
    t_star, _, steps = str(p["rounds"]).partition(":")
    text = (f"{TITLES.get(p['method'], p['method'])} with the diffusion model {p['diffusion']}: "
            f"noise to t* = {t_star}, "
            f"then {steps or '?'} {p['sampler'].upper()} denoising steps (plan {p['rounds']})")
    if p["method"] == "freqpure":
        text += (f", keeping the input's amplitude within radius {p['amp_radius']:g} and its phase within "
                 f"radius {p['phase_radius']:g} (δ = {p['delta']:g}, {p['variant']} variant: {p['mode']} arithmetic, "
                 f"reference = {p['reference']})")
    return text + (f"; the classifier {cfg['classifier']['name']} decides by {d['vote']} vote over "
                   f"{d['ensemble']} purification(s) per image")


def _purifier_facts(results: Results) -> list[tuple[str, str]]:
    cfg = results.config
    p, d = _purifier_settings(cfg["purifier"]), cfg["defence"]
    facts = [("classifier", cfg["classifier"]["name"])]
    if p["method"] == "none":
        return facts + [("purifier", "none: the attack and the judgement see the bare classifier")]
    facts += [("purifier", TITLES.get(p["method"], p["method"])), ("diffusion model", p["diffusion"]),
              ("plan", f"{p['rounds']} (t*:steps per round), {p['sampler']} sampler")]
    if p["method"] == "freqpure":
        facts += [("amplitude kept within radius", f"{p['amp_radius']:g}"),
                  ("phase kept within radius", f"{p['phase_radius']:g}, projected to within δ = {p['delta']:g}"),
                  ("variant", f"{p['variant']}: {p['mode']} arithmetic, reference = {p['reference']}, "
                              f"step rule {p['step_rule']}, grid {p['grid']}")]
    facts.append(("decision", f"{d['vote']} vote over {d['ensemble']} purification(s) per image"))
    if d.get("purify_size"):
        facts.append(("purified at", f"{d['purify_size']} px"))
    return facts


def _sanity_rows(results: Results) -> list[dict[str, Any]]:
    s = results.sanity
    rows = []
    falls = s.get("undefended_falls")
    if falls:
        accs = ", ".join(f"{k}: {_pct(v.accuracy)}" for k, v in results.undefended.items())
        rows.append({"check": "the bare classifier falls to a plain PGD",
                     "result": f"{accs} correct (must be <= {_pct(falls['threshold'])})", "ok": falls["ok"]})
    for label, g in (s.get("gradients_finite_nonzero") or {}).items():
        median = g.get("median_norm")
        median_text = f", median norm {median:.3g}" if isinstance(median, int | float) and math.isfinite(median) else ""
        bad = g.get("samples_with_zero_or_nonfinite_gradient", 0)
        rows.append({"check": f"{label}: gradient through the purifier is finite and non-zero",
                     "result": f"{bad} image(s) with a zero or non-finite gradient{median_text}", "ok": g["ok"]})
    sweep = s.get("eps_sweep")
    if sweep:
        points = ", ".join(f"ε = {e * 255:.3g}/255: {_pct(a)}" for e, a in zip(sweep["eps"], sweep["accuracy"]))
        points = points or str(sweep.get("verdict", ""))  # a sweep not run says why
        rows.append({"check": f"accuracy falls as ε grows ({sweep['attack']}, {sweep['samples']} images)",
                     "result": points, "ok": sweep["falls"]})
    return rows


# Protocol entries about the purifier's randomness or graph: they do not apply to the bare classifier.
_PURIFIER_ONLY = ("noise", "noise_scheme", "gradient_memory")
_BARE_WORDING = (("judged once by the defence with its own randomness (noise seeded by (seed, batch), independent of "
                  "the attack's draws)", "classified once by the bare classifier (deterministic: no purifier, no "
                  "vote)"),
                 ("following the exact gradient through every purification step",
                  "following the classifier's own gradient (there is no purifier)"),
                 ("(1 against a deterministic defence)", "(1: the bare classifier has no randomness)"))


def _protocol_rows(results: Results) -> list[tuple[str, str]]:
    """The protocol of a run in words; for the undefended run, without what only a purifier has."""
    bare = results.config["purifier"]["method"] == "none"
    rows = []
    for key, value in results.protocol.items():
        if bare and key in _PURIFIER_ONLY:
            continue
        name = key.replace("_", " ")
        if isinstance(value, dict):
            value = "; ".join(f"{k}: {v}" for k, v in value.items())
        value = str(value)
        if bare:
            for old, new in _BARE_WORDING:
                value = value.replace(old, new)
        rows.append((name, value))
    return rows


def _bare_note(results: Results) -> str | None:
    """One sentence on the no-defence card: what its attack column and its sanity row count, and why they differ."""
    if results.config["purifier"]["method"] != "none":
        return None
    text = (f"Attack columns: the same attack the defences face, aimed straight at the bare classifier; an image "
            f"counts only when the classifier gets both the clean and the attacked image right "
            f"({results.robust.correct} of {results.n} here, {_pct(results.robust.accuracy)}).")
    if results.undefended:
        acc = next(iter(results.undefended.values()))
        steps = results.config.get("sanity", {}).get("undefended_steps", "?")
        text += (f" The sanity row is a separate check that the attack code works: a plain {steps}-step PGD on the "
                 f"same images, counted on the attacked image alone ({acc.correct} of {acc.n}, "
                 f"{_pct(acc.accuracy)}); it must fall to "
                 f"{_pct(results.sanity.get('undefended_falls', {}).get('threshold', 0.05))} or less. The two differ "
                 "because the attacks differ (steps, step size, EOT, random start) and the sanity row does not need "
                 "the clean image right.")
    return text


# ---------------------------------------------------------------------------------------------
# Images and plots
# ---------------------------------------------------------------------------------------------
def attack_heading(attack: dict[str, Any]) -> str:
    """A column heading in words, e.g. ``PGD L∞ 8/255, full gradient`` (the label is a slug for files)."""
    from freqpure.evaluation.table import attack_settings

    parts = attack_settings(attack).split(", ")
    return f"{parts[0]}, {parts[-1]}" if len(parts) > 1 else parts[0]


def _attack_configs(runs: Sequence[RunData]) -> dict[str, dict[str, Any]]:
    return {label: attack for run in runs for label, attack in run.results.attacks()}


def _image(png: bytes, alt: str) -> dict[str, Any]:
    width, height = Image.open(io.BytesIO(png)).size
    return {"uri": data_uri(png), "alt": alt, "width": width, "height": height}


def _grid_png(runs: Sequence[RunData], rows: int) -> bytes:
    from freqpure.plots import make_grid

    buf = io.BytesIO()
    make_grid({run.title: run.examples for run in runs if run.examples is not None}, buf, rows=rows)
    return buf.getvalue()


def _accuracy_png(runs: Sequence[RunData]) -> bytes:
    from freqpure.plots import accuracy_plot

    rows = []
    for run in runs:
        r = run.results
        rows.append((run.title, "clean", r.clean.accuracy, *r.clean.ci95))
        rows.append((run.title, "robust", r.robust.accuracy, *r.robust.ci95))
    buf = io.BytesIO()
    accuracy_plot(rows, buf)
    return buf.getvalue()


def _spectra_rows(ex: dict[str, np.ndarray], i: int) -> tuple[list[dict[str, Any]], str]:
    keys = [k for k in ("clean", "adversarial", "purified") if k in ex]
    if "purified" in ex and np.array_equal(ex["purified"], ex["adversarial"]):
        keys.remove("purified")
    specs = spectra([ex[k][i] for k in keys])
    amp_max = max(float(a.max()) for a, _ in specs) or 1.0
    diffs = [(np.abs(a - specs[0][0]), np.abs(wrap_phase(torch.from_numpy(p - specs[0][1])).numpy())) for a, p in specs]
    damp_max = max(float(d.max()) for d, _ in diffs) or 1.0
    rows = []
    for j, key in enumerate(keys):
        amp, phase = specs[j]
        cells = [_image(image_png(ex[key][i]), f"{key} image"),
                 _image(_map_png(amp / amp_max, _SEQUENTIAL), f"{key} log amplitude"),
                 _image(_map_png((phase + math.pi) / (2 * math.pi), _CYCLIC), f"{key} phase")]
        if j > 0:
            da, dp = diffs[j]
            cells += [_image(_map_png(da / damp_max, _SEQUENTIAL), f"{key} amplitude change"),
                      _image(_map_png(dp / math.pi, _SEQUENTIAL), f"{key} phase change")]
        rows.append({"name": key, "cells": cells})
    return rows, f"{damp_max:.3g}", amp_max


def _colour_bar(anchors: np.ndarray, width: int = 96, height: int = 10) -> bytes:
    """A horizontal colour bar of ``anchors`` (low on the left), as PNG."""
    return png_bytes(colour_map(np.repeat(np.linspace(0, 1, width)[None, :], height, axis=0), anchors))


def _axes_key(height: int, width: int, size: int = 96) -> bytes:
    """The axes every spectrum thumbnail shares: frequency u left to right, v top to bottom, DC in the centre."""
    from PIL import ImageDraw

    pad = 22
    img = Image.new("RGB", (size + 2 * pad, size + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.rectangle([pad, pad, pad + size - 1, pad + size - 1], outline=(120, 120, 120))
    cx, cy = pad + size * (width // 2) / width, pad + size * (height // 2) / height
    draw.line([pad, cy, pad + size - 1, cy], fill=(190, 190, 190))
    draw.line([cx, pad, cx, pad + size - 1], fill=(190, 190, 190))
    draw.text((cx + 3, cy + 2), "DC", fill=(40, 40, 40))
    lo_u, hi_u, lo_v, hi_v = -(width // 2), (width - 1) // 2, -(height // 2), (height - 1) // 2
    draw.text((pad, pad + size + 3), str(lo_u), fill=(40, 40, 40))
    draw.text((pad + size - 12, pad + size + 3), str(hi_u), fill=(40, 40, 40))
    draw.text((cx - 3, pad + size + 3), "u", fill=(40, 40, 40))
    draw.text((2, pad), str(lo_v), fill=(40, 40, 40))
    draw.text((2, pad + size - 10), str(hi_v), fill=(40, 40, 40))
    draw.text((6, cy - 5), "v", fill=(40, 40, 40))
    return png_bytes(np.asarray(img))


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------
def _anchor(text: str) -> str:
    return "run-" + re.sub(r"[^a-zA-Z0-9_-]+", "-", text).strip("-").lower()


def _paired(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    from freqpure.errors import FreqpureError
    from freqpure.evaluation.paired import compare_samples

    with_samples = [r for r in runs if r.samples]
    pairs = list(combinations(with_samples, 2))
    defended = [(a, b) for a, b in pairs if a.method != "none" and b.method != "none"]
    pairs = defended or pairs  # against the bare classifier the comparison says little when defences can be paired
    out = []
    for a, b in pairs:
        try:
            cmp = compare_samples(a.samples, b.samples, ["clean", *a.results.per_attack, "worst case"])
        except FreqpureError:
            continue  # no common images: nothing to pair
        rows = [{"metric": r.metric, "a": _pct(r.accuracy_a), "b": _pct(r.accuracy_b), "only_a": r.only_a,
                 "only_b": r.only_b, "p": f"{r.p:.3g}", "significant": r.p < 0.05} for r in cmp.rows]
        worst = cmp.rows[-1]
        out.append({"a": a.title, "b": b.title, "n": len(cmp.common), "rows": rows, "worst": worst,
                    "both_defended": a.method != "none" and b.method != "none"})
    return out


def _reading(runs: Sequence[RunData], paired: list[dict[str, Any]]) -> list[str]:
    lines = []
    for run in runs:
        r = run.results
        attacks = len(r.per_attack)
        if run.method == "none":
            lines.append(f"Without a defence, the attack{'s' if attacks > 1 else ''} leave{'' if attacks > 1 else 's'} "
                         f"{r.robust.correct} of {r.n} test images correctly classified ({_pct(r.robust.accuracy)}, "
                         f"clean accuracy {_pct(r.clean.accuracy)}): "
                         + ("the attack works on the bare classifier, so whatever a defence keeps is the defence's "
                            "doing." if r.robust.accuracy <= 0.1 else "the attack is weak even without a defence; "
                            "read the defended numbers with care."))
        else:
            lines.append(f"{run.title} keeps {r.robust.correct} of {r.n} test images correct under the worst case of "
                         f"{attacks} adaptive attack{'s' if attacks > 1 else ''} (robust accuracy "
                         f"{_pct(r.robust.accuracy)}, 95% interval {_interval(r.robust.ci95)}), against "
                         f"{_pct(r.clean.accuracy)} on clean images.")
    shown = [p for p in paired if p["both_defended"]] or paired[:1]
    for p in shown:
        w = p["worst"]
        verdict = ("a difference larger than chance explains (p < 0.05)" if w.p < 0.05
                   else "not distinguishable from chance at this n (p >= 0.05)")
        lines.append(f"On the {p['n']} images both runs attacked, {p['a']} is robust where {p['b']} is not on "
                     f"{w.only_a} image(s), the reverse on {w.only_b} (exact McNemar p = {w.p:.3g}): {verdict}.")
    warned = [run.title for run in runs if run.results.warnings]
    if warned:
        lines.append(f"Warnings were raised for {', '.join(warned)}: see the section of that defence before trusting "
                     "its numbers.")
    return lines


def _what_was_run(runs: Sequence[RunData]) -> dict[str, Any]:
    from freqpure.evaluation.table import attack_settings

    defences = [{"title": run.title, "text": defence_in_words(run.results)} for run in runs]
    used: dict[str, list[str]] = {}  # every run's attacks, each listed once with the runs that faced it
    for run in runs:
        for _, attack in run.results.attacks():
            used.setdefault(attack_settings(attack), [])
            if run.title not in used[attack_settings(attack)]:
                used[attack_settings(attack)].append(run.title)
    attacks = [text + ("" if len(runs) == 1 or len(titles) == len(runs) else f" (against {', '.join(titles)})")
               for text, titles in used.items()]
    first = runs[0].results
    data = f"{first.n} test images ({first.data}), seed {first.seed}, noise scheme {first.noise_scheme}"
    return {"defences": defences, "attacks": attacks, "data": data, "models": _models_note(runs)}


def _models_note(runs: Sequence[RunData]) -> str | None:
    """A sentence when the runs use freqpure's bundled models: small CPU-trained models, not the paper's."""
    from freqpure.models.registry import model_info

    names = set()
    for run in runs:
        cfg = run.results.config
        names.add(cfg["classifier"]["name"])
        if cfg["purifier"]["method"] != "none":
            names.add(cfg["purifier"]["diffusion"])
    bundled = []
    for name in sorted(names):
        try:
            if model_info(name).get("bundled"):
                bundled.append(name)
        except Exception:  # a file path or an unknown name: not a bundled model
            continue
    if not bundled:
        return None
    return (f"The models ({', '.join(bundled)}) are freqpure's bundled small models, trained on a CPU for this "
            "project (a ResNet of about 90% clean accuracy and a 2.25M-parameter UNet), not the paper's "
            "(WRN-28-10 and the published score models): these numbers show how the defences behave at small scale, "
            "not the paper's result.")


def _accuracy_table(runs: Sequence[RunData]) -> dict[str, Any]:
    from freqpure.evaluation.table import table_columns

    columns, placement = table_columns([run.results for run in runs])

    def cell(acc):
        if acc is None:
            return None
        return {"value": _pct(acc.accuracy), "interval": _interval(acc.ci95), "count": f"{acc.correct}/{acc.n}"}

    rows = []
    for run, mine in zip(runs, placement):
        r = run.results
        by_col = {i: r.per_attack[label] for label, i in mine.items()}
        rows.append({"title": run.title, "anchor": _anchor(run.title), "n": r.n, "clean": cell(r.clean),
                     "attacks": [cell(by_col.get(i)) for i in range(len(columns))], "robust": cell(r.robust)})
    configs = _attack_configs(runs)

    def heading(c) -> str:
        words = attack_heading(configs[c.label]) if c.label in configs else c.heading.strip("`")
        suffix = re.search(r" \(\d+\)$", c.heading)
        return words + (suffix.group(0) if suffix else "")

    return {"columns": [{"heading": heading(c), "settings": c.settings, "label": c.label} for c in columns],
            "rows": rows}


def _run_section(run: RunData, spectra_examples: int) -> dict[str, Any]:
    from freqpure.evaluation.table import attack_settings

    r = run.results
    attacks = []
    for label, attack in r.attacks():
        secs = r.timings.per_attack_seconds_per_sample.get(label)
        acc = r.per_attack[label]
        attacks.append({"label": attack_heading(attack), "slug": label, "settings": attack_settings(attack),
                        "accuracy": f"{_pct(acc.accuracy)} {_interval(acc.ci95)}",
                        "time": "" if secs is None else f"{secs:.2f} s per image"})
    t = r.timings
    facts = [*_purifier_facts(r), ("images", f"{r.n} ({r.data})"), ("seed", str(r.seed)),
             ("time", f"{t.seconds_per_sample:.2f} s per image, {t.sample_seconds_total / 60:.1f} min of batch work on "
                      f"{r.world_size} process(es)" + ("; resumed from an interrupted run" if r.resumed else ""))]
    spectra_blocks = []
    if run.method != "none" and run.examples is not None:
        height, width = run.examples["clean"].shape[-2:]
        for i in range(min(spectra_examples, run.examples["clean"].shape[0])):
            rows, scale, amp_max = _spectra_rows(run.examples, i)
            bars = [{"image": _image(_colour_bar(_SEQUENTIAL), "colour bar"), "low": "0", "high": f"{amp_max:.3g}"},
                    {"image": _image(_colour_bar(_CYCLIC), "colour bar"), "low": "−π", "high": "π"},
                    {"image": _image(_colour_bar(_SEQUENTIAL), "colour bar"), "low": "0", "high": scale},
                    {"image": _image(_colour_bar(_SEQUENTIAL), "colour bar"), "low": "0", "high": "π"}]
            spectra_blocks.append({"index": i, "rows": rows, "scale": scale, "bars": bars,
                                   "axes": _image(_axes_key(height, width), "spectrum axes"),
                                   "size": f"{height}x{width}"})
    return {"title": run.title, "anchor": _anchor(run.title), "path": str(run.path), "facts": facts,
            "attacks": attacks, "sanity": _sanity_rows(r), "warnings": r.warnings, "protocol": _protocol_rows(r),
            "spectra": spectra_blocks, "purifier": run.method != "none", "note": _bare_note(r)}


def _analysis_view(analysis: AnalysisData) -> dict[str, Any]:
    data = analysis.data
    summary = data.get("summary", {}) if isinstance(data.get("summary"), dict) else {}
    cases = []
    for name, case in (summary.get("cases") or {}).items():
        case = case if isinstance(case, dict) else {}
        cases.append({"name": name, "n": case.get("n", ""),
                      "amplitude": _fmt((case.get("amplitude") or {}).get("spearman")),
                      "phase": _fmt((case.get("phase") or {}).get("spearman"))})
    targets = []
    for name, t in (data.get("targets") or {}).items():
        t = t if isinstance(t, dict) else {"value": t}
        targets.append({"name": name, "value": _fmt(t.get("value")), "target": str(t.get("target", "")),
                        "pass": t.get("pass")})
    plots = [{"name": name, "image": _image(png, name)} for name, png in analysis.plots.items()]
    settings = data.get("settings")
    return {"file": analysis.path.name, "cases": cases, "targets": targets, "plots": plots,
            "settings": json.dumps(settings, indent=2, default=str) if settings is not None else None}


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "n/a"
    return str(v)


def _raw(inputs: ReportInputs) -> list[dict[str, str]]:
    raw = []
    if inputs.demo is not None:
        raw.append({"name": "demo settings (results.json)",
                    "text": yaml.safe_dump(inputs.demo.settings, sort_keys=False)})
    for run in inputs.runs:
        r = run.results
        meta = {"schema_version": r.schema_version, "noise_scheme": r.noise_scheme, "versions": r.versions}
        raw.append({"name": f"{run.title}: config.yaml", "text": _without_unused_keys(run.config_text)})
        raw.append({"name": f"{run.title}: versions and noise scheme", "text": yaml.safe_dump(meta, sort_keys=False)})
    return raw


def _without_unused_keys(config_text: str) -> str:
    """The saved config text, without ``data.image_size`` for CIFAR-10 (a key only ImageNet runs use)."""
    try:
        data = yaml.safe_load(config_text)
    except yaml.YAMLError:
        return config_text
    section = data.get("data") if isinstance(data, dict) else None
    if not isinstance(section, dict) or section.get("dataset") != "cifar10" or "image_size" not in section:
        return config_text
    lines = config_text.splitlines()
    out, in_data = [], False
    for line in lines:
        if not line.startswith((" ", "\t")):
            in_data = line.startswith("data:")
        if in_data and line.strip().startswith("image_size:"):
            continue
        out.append(line)
    out.append("# data.image_size left out: it applies to ImageNet only (CIFAR-10 images are used at 32x32)")
    return "\n".join(out) + "\n"


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env


def render_html(inputs: ReportInputs, *, max_examples: int = 8, max_spectra: int = 1) -> str:
    """The report page for ``inputs`` (see :func:`write_report`)."""
    from freqpure import __version__

    runs = inputs.runs
    names = ", ".join(p.resolve().name for p in inputs.paths)
    page: dict[str, Any] = {"title": f"freqpure report: {names}", "kind": inputs.kind, "version": __version__,
                            "paths": [str(p) for p in inputs.paths], "csp": CSP, "runs": [], "grid": None,
                            "analysis": None, "paired": [], "reading": [], "what": None, "accuracy": None,
                            "accuracy_plot": None, "raw": _raw(inputs)}
    if runs:
        paired = _paired(runs)
        page.update(what=_what_was_run(runs), accuracy=_accuracy_table(runs), paired=paired,
                    reading=_reading(runs, paired), accuracy_plot=_image(_accuracy_png(runs), "accuracy plot"),
                    runs=[_run_section(run, max_spectra) for run in runs])
        if max_examples > 0 and any(run.examples is not None for run in runs):
            use_saved = inputs.grid_png is not None and max_examples >= 8
            png = inputs.grid_png if use_saved else _grid_png(runs, max_examples)
            page["grid"] = {"image": _image(png, "examples: clean, adversarial and purified images with predictions"),
                            "defences": [run.title for run in runs]}
    if inputs.analysis is not None:
        page["analysis"] = _analysis_view(inputs.analysis)
    return _environment().get_template("report.html.j2").render(page=page)


def write_report(
    run_dir: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    *,
    max_examples: int = 8,
    max_spectra: int = 1,
) -> Path:
    """Write a self-contained HTML report and return its path.

    Args:
        run_dir: an evaluation run dir, a demo dir, an analysis dir, or a list of run dirs (a comparison).
        out: output file (default ``run_dir/report.html``; required for several run dirs).
        max_examples: rows of the example grid (0: no grid).
        max_spectra: examples whose amplitude/phase spectra are shown per defended run.

    The page is kept under :data:`MAX_BYTES` by showing fewer spectra, then fewer grid rows.

    Raises:
        FileNotFoundError: a required file is missing (the message names it).
        ValueError: a file is unreadable or malformed (the message names it).
    """
    if max_examples < 0 or max_spectra < 0:
        raise UsageError("max_examples and max_spectra must be >= 0")
    many = not isinstance(run_dir, str | Path)
    if many and len(run_dir) == 1:
        run_dir, many = run_dir[0], False
    if many and out is None:
        raise UsageError("several run dirs: give the output file (--out FILE)")
    inputs = ReportInputs.read(run_dir)
    page = render_html(inputs, max_examples=max_examples, max_spectra=max_spectra)
    while len(page.encode()) > MAX_BYTES and (max_spectra > 0 or max_examples > 2):
        max_spectra, max_examples = (max_spectra - 1, max_examples) if max_spectra > 0 else (0, max_examples // 2)
        page = render_html(inputs, max_examples=max_examples, max_spectra=max_spectra)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_NAME
    return write_text_atomic(path, page)  # a unique temporary name: never another file, never half a page


def is_report(path: str | Path) -> bool:
    """Whether ``path`` is a page written by :func:`write_report` (which a new report may replace)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    return "<title>freqpure report:" in head and CSP in head
