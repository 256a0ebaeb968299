"""A static, self-contained HTML report of an evaluation run, a demo, or a frequency analysis.

:func:`write_report` reads a directory and writes one HTML file with inline CSS and every image
embedded as a base64 PNG ``data:`` URI: no scripts, no external assets, it works offline (a
Content-Security-Policy in the page forbids anything else, so a stray external reference shows up
as a console error in a browser).

Accepted directories (detected in this order):

* **demo dir** — one sub-directory per defence (``none/``, ``diffpure/``, ``freqpure/``, or any
  sub-directory that is a run dir), each a normal run dir, plus a top-level ``results.json`` and
  optionally ``grid.png``;
* **run dir** — ``config.yaml``, ``results.json`` and ``examples.npz`` (required), ``results.md``
  and ``samples.jsonl`` (shown when present);
* **analysis dir** — only ``analysis.json`` (+ its plots), as written by ``freqpure analyze``.

Any of them may also hold ``analysis.json`` and the PNG plots it lists. ``examples.npz`` holds
``clean``, ``adversarial`` (required) and ``purified`` (float ``[N, C, H, W]`` in [0, 1]),
``labels`` (required), ``pred_clean``, ``pred_adversarial`` (int ``[N]``) and ``class_names`` (str
``[K]``); ``results.json`` is read defensively: every scalar is shown, and values with a sibling
interval (``{"accuracy": a, "ci95": [lo, hi]}``, ``"x"`` + ``"x_ci95"``, ``lower``/``upper``) are
shown with it. A missing required file or an unreadable one raises ``FileNotFoundError`` /
``ValueError`` naming the file. All text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from freqpure.errors import NotFoundError, UsageError
from freqpure.spectral import centred_spectrum, wrap_phase

__all__ = ["write_report", "ReportInputs", "load_run", "DEFENCE_ORDER", "REPORT_NAME"]

REPORT_NAME = "report.html"
DEFENCE_ORDER = ("none", "diffpure", "freqpure")
RUN_FILES = ("config.yaml", "results.json", "examples.npz")
_INTERVAL_KEYS = ("ci95", "ci_95", "ci", "interval", "wilson", "wilson95", "wilson_ci", "confidence_interval")
_VALUE_KEYS = ("value", "accuracy", "acc", "estimate", "mean", "rate")
_SECTION_KEYS = ("protocol", "sanity", "settings", "versions", "timings", "timing", "environment")
_NOT_METRICS = (*_SECTION_KEYS, "config", "warnings")  # shown elsewhere (config.yaml, own tables)
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
class RunData:
    """One evaluation run directory, read and validated."""

    name: str
    path: Path
    config_text: str
    results: dict[str, Any]
    examples: dict[str, np.ndarray]
    results_md: str | None = None
    samples: list[Any] | None = None
    analysis: AnalysisData | None = None


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


def load_run(directory: str | Path, name: str | None = None) -> RunData:
    """Read a run directory (``config.yaml``, ``results.json``, ``examples.npz`` required)."""
    directory = Path(directory)
    what = "an evaluation run dir holds config.yaml, results.json and examples.npz"
    config_text, _ = _read_yaml(_require(directory / "config.yaml", what))
    results = _read_json(_require(directory / "results.json", what))
    if not isinstance(results, dict):
        raise UsageError(f"{directory / 'results.json'}: expected a JSON object at the top level")
    examples = _read_examples(_require(directory / "examples.npz", what))
    md = directory / "results.md"
    samples = directory / "samples.jsonl"
    return RunData(
        name=name or directory.name,
        path=directory,
        config_text=config_text,
        results=results,
        examples=examples,
        results_md=_read_text(md) if md.exists() else None,
        samples=_read_jsonl(samples) if samples.exists() else None,
        analysis=_load_analysis(directory),
    )


def _is_run_dir(directory: Path) -> bool:
    return any((directory / f).exists() for f in RUN_FILES)


def _sub_runs(directory: Path) -> list[Path]:
    subs = [p for p in directory.iterdir() if p.is_dir() and _is_run_dir(p)]
    rank = {n: i for i, n in enumerate(DEFENCE_ORDER)}
    return sorted(subs, key=lambda p: (rank.get(p.name, len(rank)), p.name))


@dataclass
class ReportInputs:
    """Everything a report shows: ``kind`` is ``"demo"``, ``"run"`` or ``"analysis"``."""

    kind: str
    path: Path
    runs: list[RunData]
    results: dict[str, Any] | None = None  # demo's top-level results.json
    grid_png: bytes | None = None  # demo's grid.png
    analysis: AnalysisData | None = None  # analysis.json at the top level

    @classmethod
    def read(cls, directory: str | Path) -> ReportInputs:
        directory = Path(directory)
        if not directory.is_dir():
            raise NotFoundError(f"{directory}: not a directory (expected a run, demo or analysis dir)")
        subs = _sub_runs(directory)
        analysis = _load_analysis(directory)
        if subs:
            results = _read_json(_require(directory / "results.json", "a demo dir holds a top-level results.json"))
            if not isinstance(results, dict):
                raise UsageError(f"{directory / 'results.json'}: expected a JSON object at the top level")
            grid = directory / "grid.png"
            return cls("demo", directory, [load_run(p) for p in subs], results,
                       _read_png(grid) if grid.exists() else None, analysis)
        if _is_run_dir(directory):
            run = load_run(directory)
            run.analysis = None  # shown once, at the top level
            return cls("run", directory, [run], analysis=analysis)
        if analysis is not None:
            return cls("analysis", directory, [], analysis=analysis)
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
# results.json → rows
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """One row of a results table: a dotted name, a value, and an interval if one was found."""

    name: str
    value: Any
    interval: tuple[float, float] | None = None
    key: str = ""  # the key the value was stored under, when the name is its parent's (``{"accuracy": ..}``)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _as_interval(v: Any) -> tuple[float, float] | None:
    if isinstance(v, list | tuple) and len(v) == 2 and all(_is_number(u) for u in v):
        return float(v[0]), float(v[1])
    if isinstance(v, dict):
        for lo, hi in (("lower", "upper"), ("lo", "hi"), ("low", "high")):
            if _is_number(v.get(lo)) and _is_number(v.get(hi)):
                return float(v[lo]), float(v[hi])
    return None


def _own_interval(d: Mapping[str, Any]) -> tuple[set[str], tuple[float, float] | None]:
    """The interval stored inside a value dict: ``{"accuracy": a, "ci95": [lo, hi]}`` or ``lower``/``upper``."""
    for key in _INTERVAL_KEYS:
        interval = _as_interval(d.get(key))
        if interval is not None:
            return {key}, interval
    for lo, hi in (("lower", "upper"), ("lo", "hi"), ("low", "high")):
        if _is_number(d.get(lo)) and _is_number(d.get(hi)):
            return {lo, hi}, (float(d[lo]), float(d[hi]))
    return set(), None


def _sibling_interval(d: Mapping[str, Any], base: str) -> tuple[set[str], tuple[float, float] | None]:
    """The interval of value ``d[base]`` among its siblings: ``base_ci95``, ``base.ci``, ``base_lower`` …"""
    for sep in ("_", "."):
        for key in _INTERVAL_KEYS:
            interval = _as_interval(d.get(f"{base}{sep}{key}"))
            if interval is not None:
                return {f"{base}{sep}{key}"}, interval
        for lo, hi in (("lower", "upper"), ("lo", "hi")):
            lo_key, hi_key = f"{base}{sep}{lo}", f"{base}{sep}{hi}"
            if _is_number(d.get(lo_key)) and _is_number(d.get(hi_key)):
                return {lo_key, hi_key}, (float(d[lo_key]), float(d[hi_key]))
    return set(), None


def metric_rows(obj: Any, prefix: str = "", skip: Iterable[str] = _NOT_METRICS) -> list[Metric]:
    """Flatten a results dict into rows, pairing values with their intervals (see the module docstring).

    Top-level keys in ``skip`` (config, protocol, versions, timings, ...) are left out: they get
    their own tables. Lists of objects become one group of rows per item, labelled by the item's
    ``defence`` / ``name`` / ``label`` (else its index).
    """
    if not isinstance(obj, dict):
        return [Metric(prefix or "value", obj)]
    rows: list[Metric] = []
    consumed: set[str] = set()
    value_key = next((k for k in _VALUE_KEYS if _is_number(obj.get(k))), None)
    if value_key is not None:
        keys, interval = _own_interval(obj)
        if interval is not None:
            rows.append(Metric(prefix or value_key, obj[value_key], interval, value_key))
            consumed |= keys | {value_key}
    paired: dict[str, tuple[float, float]] = {}
    for key, value in obj.items():
        if key not in consumed and _is_number(value):
            keys, interval = _sibling_interval(obj, key)
            if interval is not None:
                paired[key] = interval
                consumed |= keys
    skip = set(skip) if not prefix else set()
    for key, value in obj.items():
        if key in consumed or key in skip:
            continue
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            rows.extend(metric_rows(value, name, ()))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                label = next((item[k] for k in ("defence", "name", "label") if isinstance(item.get(k), str)), i)
                rows.extend(metric_rows(item, f"{name}[{label}]", ()))
        else:
            rows.append(Metric(name, value, paired.get(key)))
    return rows


def _is_fraction_metric(m: Metric) -> bool:
    """An accuracy-like fraction (shown in %): a float in [0, 1] whose own name says accuracy or rate."""
    last = (m.key or m.name.rsplit(".", 1)[-1]).lower()
    in_unit = isinstance(m.value, float) and 0 <= m.value <= 1
    ok_interval = m.interval is None or all(0 <= v <= 1 for v in m.interval)
    return ("acc" in last or "rate" in last) and in_unit and ok_interval


def _fmt_number(v: Any, percent: bool = False) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int) and not percent:
        return str(v)
    if _is_number(v):
        if not math.isfinite(v):
            return str(v)
        return f"{100 * v:.1f}%" if percent else f"{v:.4g}"
    if isinstance(v, str):
        return v
    text = json.dumps(v, default=str)
    return text if len(text) <= 400 else text[:397] + "..."


def _fmt_metric(m: Metric) -> tuple[str, str]:
    percent = _is_fraction_metric(m)
    value = _fmt_number(m.value, percent)
    interval = ""
    if m.interval is not None:
        interval = f"[{_fmt_number(m.interval[0], percent)}, {_fmt_number(m.interval[1], percent)}]"
    return value, interval


# ---------------------------------------------------------------------------------------------
# HTML pieces
# ---------------------------------------------------------------------------------------------
def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:1.6em;margin:.2em 0 .1em} h2{font-size:1.3em;margin-top:1.8em;border-bottom:2px solid #dde2e8}
h3{font-size:1.08em;margin-top:1.4em} .muted{color:#66707a;font-size:.9em}
nav a{margin-right:14px} section.run{background:#fff;border:1px solid #dde2e8;border-radius:8px;padding:4px 18px 18px;
margin-top:22px}
table{border-collapse:collapse;margin:8px 0;font-size:.92em;background:#fff}
th,td{border:1px solid #d5dbe1;padding:4px 9px;text-align:left;vertical-align:top} td.num{white-space:nowrap}
th{background:#eef1f5} td.num{font-variant-numeric:tabular-nums;text-align:right}
pre{background:#f0f2f5;border:1px solid #dde2e8;padding:10px;overflow:auto;font-size:.85em;max-height:420px}
.grid td{text-align:center;padding:4px} .grid img,.spec img{image-rendering:pixelated;display:block;margin:0 auto}
figure{margin:0} figcaption{font-size:.8em;line-height:1.25;margin-top:2px}
.ok{color:#17803d;font-weight:600} .bad{color:#c2261b;font-weight:600}
.plot img{max-width:100%;border:1px solid #dde2e8;background:#fff;margin:6px 0}
.pass{color:#17803d;font-weight:600} .fail{color:#c2261b;font-weight:600}
details{margin:8px 0} summary{cursor:pointer;color:#2f5d8a} ul.warn li{color:#8a5a00}
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _img(png: bytes, alt: str, cls: str = "") -> str:
    width, height = Image.open(io.BytesIO(png)).size
    class_attr = f' class="{_e(cls)}"' if cls else ""
    return f'<img src="{data_uri(png)}" alt="{_e(alt)}" width="{width}" height="{height}"{class_attr}>'


def _kv_table(rows: Sequence[tuple[Any, Any]], head: tuple[str, str] = ("key", "value")) -> str:
    if not rows:
        return '<p class="muted">(none)</p>'
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(_fmt_number(v))}</td></tr>" for k, v in rows)
    return f"<table><tr><th>{_e(head[0])}</th><th>{_e(head[1])}</th></tr>{body}</table>"


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix or "value", obj)]


def _results_table(results: Mapping[str, Any]) -> str:
    rows = metric_rows(dict(results))
    if not rows:
        return '<p class="muted">results.json holds no values.</p>'
    body = []
    for m in rows:
        value, interval = _fmt_metric(m)
        cls = ' class="num"' if _is_number(m.value) else ""
        body.append(f'<tr><td>{_e(m.name)}</td><td{cls}>{_e(value)}</td><td class="num">{_e(interval)}</td></tr>')
    return ("<table><tr><th>metric</th><th>value</th><th>95% interval</th></tr>" + "".join(body) + "</table>")


def _sections_tables(results: Mapping[str, Any]) -> str:
    parts = []
    warnings = results.get("warnings")
    if warnings:
        items = warnings if isinstance(warnings, list) else [warnings]
        parts.append('<h3>Warnings</h3><ul class="warn">' + "".join(f"<li>{_e(w)}</li>" for w in items) + "</ul>")
    for key in _SECTION_KEYS:
        if key in results:
            parts.append(f"<h3>{_e(key.capitalize())}</h3>" + _kv_table(_flatten(results[key])))
    return "".join(parts)


def _class_name(names: np.ndarray | None, k: int) -> str:
    if names is not None and 0 <= k < len(names):
        return str(names[k])
    return str(k)


def _pred_caption(names: np.ndarray | None, pred: int, label: int, what: str) -> str:
    ok = pred == label
    mark = "&#10003;" if ok else "&#10007;"  # check mark / ballot x
    verdict = "correct" if ok else "wrong"
    return (f'<span class="{"ok" if ok else "bad"}" title="{_e(verdict)}">{_e(what)}: '
            f'{_e(_class_name(names, pred))} {mark}</span>')


def _grid(run: RunData, max_examples: int) -> str:
    ex = run.examples
    n = min(max_examples, ex["clean"].shape[0])
    names = ex.get("class_names")
    columns = [("clean", "clean", "pred_clean", "prediction"), ("adversarial", "adversarial", None, None),
               ("purified", "purified (from adversarial)", "pred_adversarial", "defended prediction")]
    columns = [c for c in columns if c[0] in ex]
    head = "".join(f"<th>{_e(title)}</th>" for _, title, _, _ in columns)
    rows = []
    for i in range(n):
        label = int(ex["labels"][i])
        cells = [f"<td>#{i}<br>true: <b>{_e(_class_name(names, label))}</b></td>"]
        for key, title, pred_key, pred_what in columns:
            caption = ""
            if pred_key and pred_key in ex:
                caption = _pred_caption(names, int(ex[pred_key][i]), label, pred_what)
            elif key == "adversarial":
                linf = float(np.abs(ex["adversarial"][i] - ex["clean"][i]).max()) * 255
                caption = f"L&#8734; = {_e(f'{linf:.2f}')}/255"
            png = image_png(ex[key][i])
            cells.append(f"<td><figure>{_img(png, f'{title} #{i}')}<figcaption>{caption}</figcaption></figure></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    shown = f"first {n} of {ex['clean'].shape[0]}" if n < ex["clean"].shape[0] else f"all {n}"
    legend = ('<p class="muted">Predictions are the defended classifier\'s (as stored in examples.npz): '
              '<span class="ok">&#10003; correct</span>, <span class="bad">&#10007; wrong</span>. '
              f'Showing {_e(shown)} examples.</p>')
    return f'{legend}<table class="grid"><tr><th>example</th>{head}</tr>{"".join(rows)}</table>'


def _spectra_block(run: RunData, max_spectra: int) -> str:
    ex = run.examples
    keys = [k for k in ("clean", "adversarial", "purified") if k in ex]
    n = min(max_spectra, ex["clean"].shape[0])
    if n == 0:
        return ""
    out = ['<p class="muted">Centred 2-D spectrum of the luminance (DC in the middle, frequency grows outwards): '
           'log(1 + |F|) on a common scale per example, phase on a cyclic scale, and the change from the clean '
           'image (|&#916; log amplitude|, |wrap(&#916; phase)| in [0, &#960;]).</p>']
    for i in range(n):
        specs = spectra([ex[k][i] for k in keys])
        amp_max = max(float(a.max()) for a, _ in specs) or 1.0
        diffs = [(np.abs(a - specs[0][0]), np.abs(wrap_phase(torch.from_numpy(p - specs[0][1])).numpy()))
                 for a, p in specs]
        damp_max = max(float(d.max()) for d, _ in diffs) or 1.0
        rows = []
        for j, key in enumerate(keys):
            amp, phase = specs[j]
            cells = [f"<th>{_e(key)}</th>", f"<td>{_img(image_png(ex[key][i]), f'{key} image')}</td>",
                     f"<td>{_img(_map_png(amp / amp_max, _SEQUENTIAL), f'{key} log amplitude')}</td>",
                     f"<td>{_img(_map_png((phase + math.pi) / (2 * math.pi), _CYCLIC), f'{key} phase')}</td>"]
            if j == 0:
                cells += ['<td class="muted">reference</td>', '<td class="muted">reference</td>']
            else:
                da, dp = diffs[j]
                cells += [f"<td>{_img(_map_png(da / damp_max, _SEQUENTIAL), f'{key} amplitude change')}</td>",
                          f"<td>{_img(_map_png(dp / math.pi, _SEQUENTIAL), f'{key} phase change')}</td>"]
            rows.append("<tr>" + "".join(cells) + "</tr>")
        head = ("<tr><th></th><th>image</th><th>log amplitude</th><th>phase</th>"
                "<th>|&#916; log amplitude|</th><th>|&#916; phase|</th></tr>")
        scale = _e(f"{damp_max:.3g}")
        out.append(f"<h4>Example #{i}</h4><table class=\"spec\">{head}{''.join(rows)}</table>"
                   f'<p class="muted">amplitude change scale: 0 to {scale} (log units); '
                   "phase change: 0 to &#960;</p>")
    return "".join(out)


def _samples_block(samples: list[Any] | None, limit: int = 10) -> str:
    if samples is None:
        return '<p class="muted">No samples.jsonl.</p>'
    scalar_keys: list[str] = []
    for rec in samples[:limit]:
        if isinstance(rec, dict):
            for k, v in rec.items():
                if (v is None or isinstance(v, str | int | float | bool)) and k not in scalar_keys:
                    scalar_keys.append(k)
    scalar_keys = scalar_keys[:12]
    out = f"<p>{len(samples)} per-sample records.</p>"
    if scalar_keys:
        head = "".join(f"<th>{_e(k)}</th>" for k in scalar_keys)
        rows = []
        for rec in samples[:limit]:
            rec = rec if isinstance(rec, dict) else {}
            rows.append("<tr>" + "".join(f"<td>{_e(_fmt_number(rec.get(k, '')))}</td>" for k in scalar_keys) + "</tr>")
        out += (f"<details><summary>first {min(limit, len(samples))} records (scalar fields)</summary>"
                f"<table><tr>{head}</tr>{''.join(rows)}</table></details>")
    return out


def _interval_text(stats: Mapping[str, Any] | None, k: int) -> tuple[str, str]:
    if not stats:
        return "", ""
    try:
        mean, lo, hi = stats["mean"][k], stats["lower"][k], stats["upper"][k]
    except (KeyError, IndexError, TypeError):
        return "", ""
    if mean is None:
        return "n/a", ""  # undefined, e.g. a 0/0 ratio
    if lo is None or hi is None:
        return _fmt_number(mean), ""
    return _fmt_number(mean), f"[{_fmt_number(lo)}, {_fmt_number(hi)}]"


def _analysis_block(analysis: AnalysisData) -> str:
    data = analysis.data
    summary = data.get("summary", {}) if isinstance(data.get("summary"), dict) else {}
    parts = [f'<p class="muted">From {_e(analysis.path.name)}.</p>']
    cases = summary.get("cases", {})
    if isinstance(cases, dict) and cases:
        rows = []
        for name, case in cases.items():
            case = case if isinstance(case, dict) else {}
            amp = (case.get("amplitude") or {}).get("spearman")
            pha = (case.get("phase") or {}).get("spearman")
            rows.append(f'<tr><td>{_e(name)}</td><td class="num">{_e(case.get("n", ""))}</td>'
                        f'<td class="num">{_e(_fmt_number(amp))}</td><td class="num">{_e(_fmt_number(pha))}</td></tr>')
        parts.append("<h3>Trend with frequency</h3><table><tr><th>case</th><th>images</th>"
                     "<th>Spearman(band, amplitude damage)</th><th>Spearman(band, phase damage)</th></tr>"
                     + "".join(rows) + "</table>")
    ratios = summary.get("ratios", {})
    if isinstance(ratios, dict):
        for key, entry in ratios.items():
            if not isinstance(entry, dict) or not entry.get("bands"):
                continue
            columns = {}
            for quantity in ("amplitude", "phase"):
                stats = entry.get(quantity)
                if isinstance(stats, dict):
                    for j, band in enumerate(stats.get("bands", entry["bands"])):
                        columns.setdefault(band, {})[quantity] = _interval_text(stats, j)
            rows = []
            for band in entry["bands"]:
                am, ai = columns.get(band, {}).get("amplitude", ("", ""))
                pm, pi = columns.get(band, {}).get("phase", ("", ""))
                rows.append(f'<tr><td class="num">{_e(band)}</td><td class="num">{_e(am)}</td><td class="num">'
                            f'{_e(ai)}</td><td class="num">{_e(pm)}</td><td class="num">{_e(pi)}</td></tr>')
            parts.append(f"<h3>Low-frequency damage ratio {_e(key)} (bands within r &le; {_e(entry.get('radius'))})"
                         "</h3><table><tr><th>band</th><th>amplitude ratio</th><th>95% interval</th>"
                         "<th>phase ratio</th><th>95% interval</th></tr>" + "".join(rows) + "</table>"
                         '<p class="muted">Ratio of mean damage over the same images; below 1: the numerator '
                         "damages that band less.</p>")
    targets = data.get("targets")
    if isinstance(targets, dict) and targets:
        rows = []
        for name, t in targets.items():
            t = t if isinstance(t, dict) else {"value": t}
            passed = t.get("pass")
            verdict = "" if passed is None else ('<span class="pass">pass</span>' if passed
                                                 else '<span class="fail">fail</span>')
            rows.append(f"<tr><td>{_e(name)}</td><td class=\"num\">{_e(_fmt_number(t.get('value')))}</td>"
                        f"<td>{_e(t.get('target', ''))}</td><td>{verdict}</td></tr>")
        parts.append("<h3>Targets</h3><table><tr><th>target</th><th>value</th><th>requirement</th><th></th></tr>"
                     + "".join(rows) + "</table>")
    for name, png in analysis.plots.items():
        parts.append(f'<div class="plot"><h3>{_e(name)}</h3>{_img(png, name)}</div>')
    settings = data.get("settings")
    if isinstance(settings, dict):
        parts.append("<details><summary>analysis settings</summary>" + _kv_table(_flatten(settings)) + "</details>")
    return "".join(parts)


def _run_section(run: RunData, max_examples: int, max_spectra: int, anchor: str) -> str:
    parts = [f'<section class="run" id="{_e(anchor)}"><h2>{_e(run.name)}</h2>',
             f'<p class="muted">{_e(run.path)}</p>',
             "<h3>Results</h3>", _results_table(run.results), _sections_tables(run.results),
             "<h3>Settings</h3>", f"<pre>{_e(run.config_text)}</pre>"]
    if run.results_md is not None:
        parts.append(f"<details><summary>results.md</summary><pre>{_e(run.results_md)}</pre></details>")
    parts += ["<h3>Examples</h3>", _grid(run, max_examples),
              "<h3>Amplitude and phase spectra</h3>", _spectra_block(run, max_spectra),
              "<h3>Per-sample records</h3>", _samples_block(run.samples)]
    if run.analysis is not None:
        parts += ["<h3>Frequency analysis</h3>", _analysis_block(run.analysis)]
    parts.append("</section>")
    return "".join(parts)


def _comparison_table(runs: Sequence[RunData]) -> str:
    """Rows: runs; columns: every metric with an interval in any run (e.g. clean / robust accuracy)."""
    per_run = {run.name: {m.name: m for m in metric_rows(run.results) if m.interval is not None} for run in runs}
    names: list[str] = []
    for metrics in per_run.values():
        names += [n for n in metrics if n not in names]
    if not names:
        return ""
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    rows = []
    for run in runs:
        cells = []
        for n in names:
            m = per_run[run.name].get(n)
            if m is None:
                cells.append("<td></td>")
                continue
            value, interval = _fmt_metric(m)
            cells.append(f'<td class="num">{_e(value)}<br><span class="muted">{_e(interval)}</span></td>')
        rows.append(f'<tr><td><a href="#run-{_e(run.name)}">{_e(run.name)}</a></td>{"".join(cells)}</tr>')
    return (f"<table><tr><th>defence</th>{head}</tr>{''.join(rows)}</table>"
            '<p class="muted">Value and 95% interval as stored in each run\'s results.json.</p>')


def render_html(inputs: ReportInputs, *, max_examples: int = 12, max_spectra: int = 2) -> str:
    """The report page for ``inputs`` (see :func:`write_report`)."""
    from freqpure import __version__

    title = f"freqpure report: {inputs.path.resolve().name}"
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="muted">{_e(inputs.kind)} directory {_e(inputs.path)} &middot; freqpure {_e(__version__)}</p>']
    nav = [f'<a href="#run-{_e(r.name)}">{_e(r.name)}</a>' for r in inputs.runs]
    if inputs.analysis is not None:
        nav.append('<a href="#analysis">frequency analysis</a>')
    if len(nav) > 1:
        body.append("<nav>" + "".join(nav) + "</nav>")
    if inputs.kind == "demo":
        body.append("<h2>Summary</h2>" + _comparison_table(inputs.runs))
        body.append(_sections_tables(inputs.results or {}))
        body.append("<details><summary>every value in the demo's results.json</summary>"
                    + _results_table(inputs.results or {}) + "</details>")
        if inputs.grid_png is not None:
            body.append(f'<h3>Grid</h3><div class="plot">{_img(inputs.grid_png, "demo grid")}</div>')
    for run in inputs.runs:
        body.append(_run_section(run, max_examples, max_spectra, f"run-{run.name}"))
    if inputs.analysis is not None:
        body.append('<section class="run" id="analysis"><h2>Frequency analysis</h2>'
                    + _analysis_block(inputs.analysis) + "</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    max_examples: int = 12,
    max_spectra: int = 2,
) -> Path:
    """Write a self-contained HTML report of ``run_dir`` and return its path.

    Args:
        run_dir: an evaluation run dir, a demo dir (one run dir per defence) or an analysis dir.
        out: output file (default ``run_dir/report.html``).
        max_examples: examples shown in each image grid.
        max_spectra: examples whose spectra are shown per run.

    Raises:
        FileNotFoundError: a required file is missing (the message names it).
        ValueError: a file is unreadable or malformed (the message names it).
    """
    if max_examples < 0 or max_spectra < 0:
        raise UsageError("max_examples and max_spectra must be >= 0")
    inputs = ReportInputs.read(run_dir)
    page = render_html(inputs, max_examples=max_examples, max_spectra=max_spectra)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
