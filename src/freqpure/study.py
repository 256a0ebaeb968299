"""The FreqPure-vs-DiffPure study: stages of paired measurements, resumable, timed, tabulated.

A study (:class:`StudyConfig`, e.g. ``configs/study-cifar10.yaml``) is a list of stages. A stage is
either

* ``kind: clean`` — clean accuracy after one purification (and, for headline settings, after a
  majority vote) plus the *low-band passthrough* of each purifier setting
  (:func:`run_clean_setting`); or
* ``kind: evaluate`` — a set of ``freqpure evaluate`` runs (:func:`freqpure.evaluation.evaluate`),
  one sub-folder each.

Every part is resumable: per-image records are appended as each batch finishes and a finished part
is skipped when the study is run again (a changed config is refused, as ``evaluate`` does). Each stage
folder gets ``timing.json`` (wall time and CPU hours of every invocation that did work) and
``stage.md``: accuracies with 95% Wilson intervals and paired exact McNemar tests against the stage's
DiffPure row on the same images with the same seeds (noise depends on (seed, batch) only, so two
settings see the same noise draws). The two model names at the top of the study config
(``classifier``, ``diffusion``) replace those of every part, so a GPU user reruns the whole study with
the published checkpoints by changing them.

Output layout::

    OUT/study.md                     every stage's table, in order
    OUT/clean-vs-robust.png          one point per finished evaluate run (needs matplotlib)
    OUT/STAGE/stage.md, timing.json  one stage
    OUT/STAGE/PART/...               an evaluate run dir, or a clean-stage setting
                                     (config.yaml, samples.jsonl, vote.jsonl, summary.json)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from freqpure.config import (
    PurifierConfig,
    build_purifier,
    config_diff,
    dump_yaml,
    from_dict,
    to_dict,
    with_resolved_precision,
)
from freqpure.errors import UsageError
from freqpure.evaluation.results import Accuracy, Results, accuracy, read_results, write_json
from freqpure.evaluation.store import SampleStore
from freqpure.samplers import StepNoise

__all__ = [
    "SettingConfig",
    "RunConfig",
    "StageConfig",
    "StudyConfig",
    "load_study_config",
    "mcnemar_exact",
    "band_limited_noise",
    "band_passthrough",
    "run_clean_setting",
    "run_study",
    "stage_markdown",
    "clean_vs_robust_points",
    "clean_vs_robust_plot",
]

STAGE_KINDS = ("clean", "evaluate")


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------
@dataclass
class SettingConfig:
    """One purifier setting of a ``clean`` stage.

    ``compare_to``: the name of the setting it is paired with (its DiffPure row); ``vote``: also
    measure the majority vote of the stage's ``vote_k`` purifications (headline rows).
    """

    name: str = "setting"
    purifier: PurifierConfig = field(default_factory=PurifierConfig)
    compare_to: str | None = None
    vote: bool = False


@dataclass
class RunConfig:
    """One evaluation run of an ``evaluate`` stage: an evaluation config file (relative to the study
    config's folder) plus ``key=value`` overrides (``set``), paired with run ``compare_to``."""

    name: str = "run"
    config: str = ""
    set: list[str] = field(default_factory=list)
    compare_to: str | None = None


@dataclass
class StageConfig:
    """One stage. ``planned_cpu_hours``: the estimate stated before running (recorded next to the actual).

    ``kind: clean`` uses ``settings``, ``n`` (clean accuracy), ``vote_n`` / ``vote_k`` (vote rows),
    ``passthrough_n``, ``passthrough_eps`` (L-inf size of the band-limited perturbation, e.g. 8/255)
    and ``bands`` (upper band edges in frequency-index units; the last band is everything beyond).
    ``kind: evaluate`` uses ``runs``.
    """

    name: str = "stage"
    title: str = ""
    kind: str = "evaluate"
    planned_cpu_hours: float | None = None
    settings: list[SettingConfig] = field(default_factory=list)
    runs: list[RunConfig] = field(default_factory=list)
    n: int = 1000
    vote_n: int = 256
    vote_k: int = 10
    passthrough_n: int = 256
    passthrough_eps: float | str = "8/255"
    bands: list[float] = field(default_factory=lambda: [3.0, 8.0])
    batch_size: int = 32

    def __post_init__(self) -> None:
        from freqpure.evaluation.config import parse_number

        if self.kind not in STAGE_KINDS:
            raise UsageError(f"stage {self.name!r}: kind must be one of {', '.join(STAGE_KINDS)}, got {self.kind!r}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise UsageError(f"stage name {self.name!r} must be a plain folder name")
        parts = self.settings if self.kind == "clean" else self.runs
        other = self.runs if self.kind == "clean" else self.settings
        if not parts:
            what = "settings" if self.kind == "clean" else "runs"
            raise UsageError(f"stage {self.name!r} ({self.kind}) lists no {what}")
        if other:
            raise UsageError(f"stage {self.name!r} is kind {self.kind!r}: it takes "
                             f"{'settings' if self.kind == 'clean' else 'runs'}, not "
                             f"{'runs' if self.kind == 'clean' else 'settings'}")
        names = [p.name for p in parts]
        dupes = sorted({x for x in names if names.count(x) > 1})
        if dupes:
            raise UsageError(f"stage {self.name!r}: repeated names {dupes}")
        for p in parts:
            if not p.name or "/" in p.name or p.name.startswith("."):
                raise UsageError(f"stage {self.name!r}: {p.name!r} must be a plain folder name")
            if p.compare_to is not None and p.compare_to not in names:
                raise UsageError(f"stage {self.name!r}: {p.name}.compare_to={p.compare_to!r} is not one of {names}")
        for key in ("n", "vote_n", "vote_k", "passthrough_n", "batch_size"):
            if getattr(self, key) < 1:
                raise UsageError(f"stage {self.name!r}: {key} must be >= 1, got {getattr(self, key)}")
        self.passthrough_eps = parse_number(self.passthrough_eps, f"stage {self.name!r} passthrough_eps")
        if not 0 < self.passthrough_eps <= 0.5:
            raise UsageError(f"stage {self.name!r}: passthrough_eps must be in (0, 0.5], got {self.passthrough_eps}")
        if not self.bands or any(b <= a for a, b in zip(self.bands, self.bands[1:])) or self.bands[0] < 0:
            raise UsageError(f"stage {self.name!r}: bands must be increasing edges >= 0, got {self.bands}")


@dataclass
class StudyConfig:
    """A study: the two model names every part uses, the data, the device and the stages."""

    name: str = "study"
    classifier: str = "cifar10-resnet-small"
    diffusion: str = "cifar10-ddpm-small"
    device: str = "cpu"
    data_dir: str | None = None
    seed: int = 0
    stages: list[StageConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        dupes = sorted({x for x in names if names.count(x) > 1})
        if dupes:
            raise UsageError(f"repeated stage names {dupes}")


def load_study_config(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """YAML file (strict) + ``key=value`` overrides → :class:`StudyConfig`."""
    from freqpure.config import apply_overrides, load_yaml

    return apply_overrides(load_yaml(StudyConfig, path), overrides)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs (1.0 when there are none)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _paired(a: dict[int, bool], b: dict[int, bool]) -> dict[str, Any]:
    common = sorted(set(a) & set(b))
    only_a = sum(a[i] and not b[i] for i in common)
    only_b = sum(b[i] and not a[i] for i in common)
    return {"n": len(common), "a_only": only_a, "b_only": only_b, "p": mcnemar_exact(only_a, only_b)}


def _mean_ci(values: list[float]) -> dict[str, float]:
    """Mean with a normal-approximation 95% interval."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    n = len(vals)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    mean = sum(vals) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    half = 1.959963984540054 * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


# ---------------------------------------------------------------------------------------------
# Low-band passthrough
# ---------------------------------------------------------------------------------------------
def _band_masks(height: int, width: int, edges: list[float], device: torch.device) -> Tensor:
    """Boolean ``[K + 1, H, W]`` centred masks: ``r <= e0``, ``e0 < r <= e1``, ..., ``r > e_last``."""
    from freqpure.spectral import radial_mask

    discs = [radial_mask(height, width, e, device) for e in edges]
    rings = [discs[0]] + [outer & ~inner for inner, outer in zip(discs, discs[1:])] + [~discs[-1]]
    return torch.stack(rings)


def band_labels(edges: list[float]) -> list[str]:
    """``[3, 8]`` → ``['r<=3', '3<r<=8', 'r>8']``."""
    labels = [f"r<={edges[0]:g}"] + [f"{a:g}<r<={b:g}" for a, b in zip(edges, edges[1:])]
    return labels + [f"r>{edges[-1]:g}"]


def band_limited_noise(shape: tuple[int, ...], mask: Tensor, eps: float, generator: torch.Generator) -> Tensor:
    """Gaussian noise ``[B, C, H, W]`` restricted to the centred band ``mask`` ``[H, W]``, scaled per image
    to L-inf norm ``eps`` (so its spectrum lies in the band exactly, before any clipping)."""
    z = torch.randn(shape, generator=generator, dtype=torch.float64)
    spec = torch.fft.fftshift(torch.fft.fft2(z), dim=(-2, -1)) * mask.to(torch.float64)
    v = torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1))).real
    peak = v.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * (len(shape) - 1)))
    return (eps * v / peak).float()


def band_passthrough(delta: Tensor, response: Tensor, mask: Tensor) -> Tensor:
    """Fraction of ``delta`` that survives in ``response`` within the band ``mask``, per image ``[B]``.

    ``⟨B(response), B(delta)⟩ / ‖B(delta)‖²`` with ``B`` the band projection (computed on centred
    spectra, summed over channels): 1 = the band's perturbation passes unchanged, 0 = it is removed
    (or replaced by something uncorrelated with it), negative = it is inverted.
    """
    fd = torch.fft.fftshift(torch.fft.fft2(delta.double()), dim=(-2, -1))
    fr = torch.fft.fftshift(torch.fft.fft2(response.double()), dim=(-2, -1))
    m = mask.to(torch.float64)
    num = ((fr * fd.conj()).real * m).flatten(1).sum(1)
    den = ((fd.abs() ** 2) * m).flatten(1).sum(1)
    return num / den.clamp_min(1e-30)


# ---------------------------------------------------------------------------------------------
# Clean stage: one setting
# ---------------------------------------------------------------------------------------------
def _clean_state(stage: StageConfig, setting: SettingConfig, study: StudyConfig) -> dict[str, Any]:
    """What a clean-stage setting's records depend on (saved as config.yaml; a change is refused).

    The purifier's ``precision`` is saved resolved (``auto`` -> what it means on the study's device)."""
    from freqpure.cli.common import resolve_device

    purifier = with_resolved_precision(setting.purifier, resolve_device(study.device))
    return {"setting": to_dict(replace(setting, purifier=purifier)), "classifier": study.classifier,
            "diffusion": study.diffusion, "seed": study.seed,
            "data_dir": study.data_dir, "n": stage.n, "vote_n": stage.vote_n, "vote_k": stage.vote_k,
            "passthrough_n": stage.passthrough_n, "passthrough_eps": stage.passthrough_eps,
            "bands": list(stage.bands), "batch_size": stage.batch_size}


def _upgrade_saved_state(saved: dict[str, Any]) -> dict[str, Any]:
    """A part's saved state as today's code writes it: parts recorded before the purifier had a
    ``precision`` setting ran in fp32 (the only precision there was)."""
    purifier = (saved.get("setting") or {}).get("purifier")
    if isinstance(purifier, dict) and "precision" not in purifier:
        purifier["precision"] = "fp32"
    return saved


def _check_part_dir(folder: Path, state: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    saved_path = folder / "config.yaml"
    if saved_path.exists():
        saved = _upgrade_saved_state(yaml.safe_load(saved_path.read_text()) or {})
        diff = config_diff(saved, json.loads(json.dumps(state)))
        if diff:
            raise UsageError(f"{folder} holds records of a different setting; refusing to mix them. Differences "
                             "(saved -> requested):\n  " + "\n  ".join(diff))
    else:
        tmp = saved_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(json.loads(json.dumps(state)), sort_keys=False))
        tmp.replace(saved_path)


def run_clean_setting(stage: StageConfig, setting: SettingConfig, study: StudyConfig, folder: str | Path, *,
                      classifier: torch.nn.Module, eps_model: torch.nn.Module, device: torch.device,
                      progress: bool = False) -> dict[str, Any]:
    """Clean accuracy (one purification, ``stage.n`` images), passthrough (first ``passthrough_n``) and,
    if ``setting.vote``, the majority vote of ``vote_k`` purifications (``vote_n`` images) of one setting.

    Batch ``b`` of the clean subset uses noise ``StepNoise(seed).child(b)`` for every setting, so two
    settings are paired on images *and* noise. The perturbed passthrough inputs are purified with the
    same noise as the clean image, so the response measures the perturbation alone. Records go to
    ``samples.jsonl`` / ``vote.jsonl`` batch by batch; ``summary.json`` is written at the end.
    Returns the summary.
    """
    from freqpure.evaluation.components import load_eval_data
    from freqpure.evaluation.config import DataConfig
    from freqpure.purifiers import PurifiedClassifier

    folder = Path(folder)
    _check_part_dir(folder, _clean_state(stage, setting, study))
    purifier_cfg = replace(setting.purifier, diffusion=study.diffusion)
    purifier = build_purifier(purifier_cfg, eps_model, seed=study.seed) if purifier_cfg.method != "none" else None
    labels = band_labels(list(stage.bands))
    store = SampleStore(folder / "samples.jsonl")
    store.repair()
    done = store.load()
    data = load_eval_data(DataConfig(n=stage.n, data_dir=study.data_dir))
    n = len(data.indices)
    masks = None
    todo_batches = [list(range(s, min(s + stage.batch_size, n))) for s in range(0, n, stage.batch_size)]
    todo_batches = [pos for pos in todo_batches if not all(int(data.indices[p]) in done for p in pos)]
    from tqdm.auto import tqdm

    for pos in tqdm(todo_batches, desc=f"{stage.name}/{setting.name}", disable=not progress, unit="batch"):
        b = pos[0] // stage.batch_size
        x, y = data.images(pos).to(device), data.labels[pos].to(device)
        noise = StepNoise(study.seed).child(b)
        with torch.no_grad():
            clean_p = purifier(x, noise=noise) if purifier is not None else x
            pred = classifier(clean_p).argmax(1)
            pass_vals: dict[str, list[float | None]] = {k: [None] * len(pos) for k in labels}
            measured = [i for i, p in enumerate(pos) if p < stage.passthrough_n]
            if measured and purifier is not None:
                if masks is None:
                    masks = _band_masks(x.shape[-2], x.shape[-1], list(stage.bands), torch.device("cpu"))
                gen = torch.Generator().manual_seed(StepNoise(study.seed).child(b).child(7).seed)
                xs = x[measured]
                for k, label in enumerate(labels):
                    delta = band_limited_noise(tuple(xs.shape), masks[k], stage.passthrough_eps, gen).to(device)
                    x_pert = (xs + delta).clamp(0, 1)
                    delta_eff = x_pert - xs
                    # purify the whole batch (so every image gets the same noise draw as its clean purification)
                    full = x.clone()
                    full[measured] = x_pert
                    response = purifier(full, noise=noise)[measured] - clean_p[measured]
                    vals = band_passthrough(delta_eff.cpu(), response.cpu(), masks[k]).tolist()
                    for i, v in zip(measured, vals):
                        pass_vals[label][i] = v
        records = []
        for i, p in enumerate(pos):
            idx = int(data.indices[p])
            if idx in done:
                continue
            records.append({"index": idx, "batch": b, "label": int(y[i]), "pred": int(pred[i]),
                            "correct": bool(pred[i] == y[i]),
                            "passthrough": {k: pass_vals[k][i] for k in labels}})
        store.append(records)

    vote_records: dict[int, dict[str, Any]] = {}
    if setting.vote and purifier is not None:
        vote_store = SampleStore(folder / "vote.jsonl")
        vote_store.repair()
        vote_done = vote_store.load()
        vdata = load_eval_data(DataConfig(n=stage.vote_n, data_dir=study.data_dir))
        voter = PurifiedClassifier(classifier, purifier, ensemble=stage.vote_k, vote="majority")
        vn = len(vdata.indices)
        for s in range(0, vn, stage.batch_size):
            pos = list(range(s, min(s + stage.batch_size, vn)))
            if all(int(vdata.indices[p]) in vote_done for p in pos):
                continue
            b = s // stage.batch_size
            x, y = vdata.images(pos).to(device), vdata.labels[pos].to(device)
            with torch.no_grad():
                vpred = voter(x, StepNoise(study.seed).child(10_000 + b)).argmax(1)
            vote_store.append([{"index": int(vdata.indices[p]), "batch": b, "pred": int(vpred[i]),
                                "correct": bool(vpred[i] == y[i])} for i, p in enumerate(pos)
                               if int(vdata.indices[p]) not in vote_done])
        vote_records = vote_store.load()

    records = store.load()
    recs = [records[int(i)] for i in data.indices]
    summary = {
        "name": setting.name,
        "purifier": to_dict(purifier_cfg),
        "effective": purifier_cfg.effective() if purifier_cfg.method != "none" else None,
        "classifier": study.classifier,
        "n": len(recs),
        "clean": accuracy([r["correct"] for r in recs]),
        "passthrough": {k: _mean_ci([r["passthrough"][k] for r in recs if r["passthrough"][k] is not None])
                        for k in labels},
        "passthrough_eps": stage.passthrough_eps,
        "vote": accuracy([r["correct"] for r in vote_records.values()]) if vote_records else None,
        "vote_k": stage.vote_k if vote_records else None,
    }
    write_json(folder / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------
def _outcomes_clean(folder: Path, file: str = "samples.jsonl") -> dict[int, bool]:
    return {i: bool(r["correct"]) for i, r in SampleStore(folder / file).load().items()}


def _outcomes_eval(folder: Path) -> dict[str, dict[int, bool]]:
    recs = SampleStore(folder / "samples.jsonl").load()
    out: dict[str, dict[int, bool]] = {"clean": {}, "worst case": {}}
    for i, r in recs.items():
        out["clean"][i] = bool(r["clean_correct"])
        out["worst case"][i] = bool(r["robust"])
        for label, a in r["attacks"].items():
            out.setdefault(label, {})[i] = bool(a["correct"])
    return out


def _pct(entry: Accuracy | dict[str, Any] | None) -> str:
    """``85.0 [81.2, 88.1]`` from an :class:`~freqpure.evaluation.results.Accuracy` (or its dict form)."""
    if isinstance(entry, dict):
        entry = Accuracy.from_dict(entry) if entry.get("n") else None
    if entry is None or not entry.n:
        return "—"
    lo, hi = entry.ci95
    return f"{100 * entry.accuracy:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _ptext(p: dict[str, Any] | None) -> str:
    if p is None:
        return "—"
    pv = "< 0.001" if p["p"] < 0.001 else f"{p['p']:.3f}"
    return f"{p['a_only']}/{p['b_only']}, p {pv}"


def _eval_config(run: RunConfig, study: StudyConfig, base_dir: Path):
    from freqpure.evaluation.config import load_eval_config

    path = (base_dir / run.config) if run.config else None
    if path is None or not path.is_file():
        raise UsageError(f"run {run.name!r}: evaluation config {run.config!r} not found (looked in {base_dir})")
    cfg = load_eval_config(path, list(run.set))
    models = [f"classifier.name={study.classifier}", f"device={study.device}"]
    if cfg.purifier.method != "none":
        models.append(f"purifier.diffusion={study.diffusion}")
    if study.data_dir:
        models.append(f"data.data_dir={study.data_dir}")
    from freqpure.config import apply_overrides

    return apply_overrides(cfg, models)


def _record_time(folder: Path, wall: float, cpu: float) -> dict[str, Any]:
    path = folder / "timing.json"
    timing = json.loads(path.read_text()) if path.is_file() else {"invocations": []}
    timing["invocations"].append({"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                  "wall_seconds": wall, "cpu_seconds": cpu, "threads": torch.get_num_threads()})
    timing["wall_hours_total"] = sum(i["wall_seconds"] for i in timing["invocations"]) / 3600
    timing["cpu_hours_total"] = sum(i["cpu_seconds"] for i in timing["invocations"]) / 3600
    write_json(path, timing)
    return timing


def _clean_table(stage: StageConfig, folder: Path) -> str:
    labels = band_labels(list(stage.bands))
    head = ["setting", "purifier", "n", "clean, 1 purification", "vs paired DiffPure (b/c, McNemar)",
            f"vote of {stage.vote_k} (n = {stage.vote_n})", "vote vs DiffPure"]
    head += [f"passthrough {k}" for k in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in stage.settings:
        part = folder / s.name
        summary_path = part / "summary.json"
        if not summary_path.is_file():
            lines.append("| " + " | ".join([s.name, "not yet run"] + [""] * (len(head) - 2)) + " |")
            continue
        summ = json.loads(summary_path.read_text())
        pur = summ["purifier"]
        desc = pur["method"] if pur["method"] != "freqpure" else \
            f"freqpure r={pur['amp_radius']:g} δ={pur['delta']:g} {pur['variant']}"
        desc += f" {pur['rounds']}"
        pair = vote_pair = None
        if s.compare_to and s.compare_to != s.name and (folder / s.compare_to / "summary.json").is_file():
            pair = _paired(_outcomes_clean(part), _outcomes_clean(folder / s.compare_to))
            if summ.get("vote") and (folder / s.compare_to / "vote.jsonl").is_file():
                vote_pair = _paired(_outcomes_clean(part, "vote.jsonl"), _outcomes_clean(folder / s.compare_to,
                                                                                         "vote.jsonl"))
        cells = [s.name, desc, str(summ["n"]), _pct(summ["clean"]), _ptext(pair), _pct(summ.get("vote")),
                 _ptext(vote_pair)]
        for k in labels:
            pt = summ["passthrough"].get(k) or {}
            cells.append("—" if not pt.get("n") else f"{pt['mean']:.2f} [{pt['lo']:.2f}, {pt['hi']:.2f}]")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accuracy in % [95% Wilson interval]. b/c = images this setting gets right and its DiffPure "
              "row wrong / the reverse (same images, same noise); p = two-sided exact McNemar. Passthrough = "
              f"fraction of a band-limited L-inf {stage.passthrough_eps:.4g} input perturbation that survives "
              "purification in its band (projection; 1 = passes unchanged, 0 = removed), mean [95% normal "
              f"interval] over the first {stage.passthrough_n} images."]
    return "\n".join(lines)


def _eval_table(stage: StageConfig, folder: Path) -> str:
    from freqpure.evaluation.table import defence_settings

    results: dict[str, Results] = {}
    for r in stage.runs:
        if (folder / r.name / "results.json").is_file():
            results[r.name] = read_results(folder / r.name)
    columns: list[str] = []
    for res in results.values():
        columns += [c for c in res.per_attack if c not in columns]
    head = ["run", "defence", "n", "clean"] + [f"`{c}`" for c in columns] + ["worst case", "vs paired DiffPure, worst "
                                                                              "case (b/c, McNemar)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    paired_lines = []
    for r in stage.runs:
        res = results.get(r.name)
        if res is None:
            lines.append("| " + " | ".join([r.name, "not yet run"] + [""] * (len(head) - 2)) + " |")
            continue
        pair = None
        if r.compare_to and r.compare_to != r.name and r.compare_to in results:
            mine, base = _outcomes_eval(folder / r.name), _outcomes_eval(folder / r.compare_to)
            pair = _paired(mine["worst case"], base["worst case"])
            for metric in mine:
                if metric in base:
                    p = _paired(mine[metric], base[metric])
                    paired_lines.append(f"| {r.name} vs {r.compare_to} | {metric} | {p['n']} | {_ptext(p)} |")
        cells = [r.name, defence_settings(res), str(res.n), _pct(res.clean)]
        cells += [_pct(res.per_attack.get(c)) for c in columns]
        cells += [_pct(res.robust), _ptext(pair)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accuracy in % [95% Wilson interval]; worst case = correct on the clean image and under every "
              "attack of the run. b/c = images this run gets right and its DiffPure run wrong / the reverse (same "
              "images, same seeds); p = two-sided exact McNemar."]
    if paired_lines:
        lines += ["", "| pair | metric | common images | b/c, McNemar |", "|---|---|---|---|", *paired_lines]
    for r in stage.runs:
        res = results.get(r.name)
        if res is None:
            continue
        from freqpure.evaluation.table import attack_settings

        lines.append(f"- **{r.name}**: " + "; ".join(f"`{lab}`: {attack_settings(a)}" for lab, a in res.attacks()))
    return "\n".join(lines)


def stage_markdown(stage: StageConfig, folder: Path) -> str:
    """The stage's table (rows not yet run are marked), with planned and spent CPU hours."""
    timing_path = folder / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else None
    planned = "not stated" if stage.planned_cpu_hours is None else f"{stage.planned_cpu_hours:g} CPU hours"
    spent = "nothing run yet" if timing is None else \
        f"{timing['cpu_hours_total']:.2f} CPU hours, {timing['wall_hours_total']:.2f} h wall " \
        f"({len(timing['invocations'])} invocation(s))"
    body = _clean_table(stage, folder) if stage.kind == "clean" else _eval_table(stage, folder)
    return f"## {stage.name}: {stage.title or stage.kind}\n\nPlanned: {planned}. Spent: {spent}.\n\n{body}\n"


def clean_vs_robust_points(study: StudyConfig, out: Path) -> list[dict[str, Any]]:
    """One point per finished evaluate run: ``{"stage", "run", "method", "variant", "clean", "robust"}``
    (worst-case robust accuracy), read from the runs' ``results.json``."""
    points = []
    for stage in study.stages:
        if stage.kind != "evaluate":
            continue
        for r in stage.runs:
            if not (out / stage.name / r.name / "results.json").is_file():
                continue
            res = read_results(out / stage.name / r.name)
            pur = res.config["purifier"]
            points.append({"stage": stage.name, "run": r.name, "method": pur["method"],
                           "variant": pur.get("variant") or "paper", "clean": res.clean.accuracy,
                           "robust": res.robust.accuracy})
    return points


def clean_vs_robust_plot(points: list[dict[str, Any]], path: str | Path) -> Path | None:
    """PNG scatter of clean vs worst-case robust accuracy, one point per defence/setting (marker = stage,
    colour = DiffPure / FreqPure paper / FreqPure official). ``None`` when there is no point yet."""
    if not points:
        return None
    from freqpure.plots import _figure

    fig, ax = _figure(7.0, 5.0)
    colours = {"diffpure": "#1f77b4", "freqpure/paper": "#2ca02c", "freqpure/official": "#d62728"}
    markers = "osD^v<>"
    stages = list(dict.fromkeys(p["stage"] for p in points))
    seen = set()
    for p in points:
        key = "diffpure" if p["method"] == "diffpure" else f"{p['method']}/{p['variant']}"
        label = key if key not in seen else None
        seen.add(key)
        ax.scatter(100 * p["clean"], 100 * p["robust"], color=colours.get(key, "#7f7f7f"),
                   marker=markers[stages.index(p["stage"]) % len(markers)], label=label, s=40)
        ax.annotate(f"{p['stage'].split('-')[0]}/{p['run']}", (100 * p["clean"], 100 * p["robust"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("worst-case robust accuracy (%)")
    ax.set_title("clean vs robust accuracy (marker = stage)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def run_study(study: StudyConfig, out: str | Path, *, base_dir: str | Path = ".", stages: list[str] | None = None,
              progress: bool = True, execute: bool = True) -> Path:
    """Run (or resume) the stages of ``study`` into ``out``; returns the path of ``study.md``.

    ``stages``: names of the stages to run (default: all); the others are only tabulated.
    ``execute=False``: run nothing, only rewrite the tables.
    ``base_dir``: the folder evaluation-config paths of ``runs`` are relative to (the study config's).
    """
    import freqpure
    from freqpure.cli.common import resolve_device
    from freqpure.evaluation.runner import evaluate

    out, base_dir = Path(out), Path(base_dir)
    names = [s.name for s in study.stages]
    unknown = sorted(set(stages or []) - set(names))
    if unknown:
        raise UsageError(f"unknown stage(s) {unknown}; the study has {names}")
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "study.yaml"
    if not saved.exists():
        saved.write_text(dump_yaml(study))
    device = resolve_device(study.device)
    models: dict[str, Any] = {}

    def shared_models():
        if not models:
            classifier = freqpure.load_classifier(study.classifier, device=device)
            models["classifier"] = classifier.eval().requires_grad_(False)
            models["eps"] = freqpure.load_diffusion(study.diffusion, device=device).eval().requires_grad_(False)
        return models["classifier"], models["eps"]

    for stage in study.stages:
        if not execute or (stages and stage.name not in stages):
            if (out / stage.name).is_dir():
                (out / stage.name / "stage.md").write_text(stage_markdown(stage, out / stage.name))
            continue
        folder = out / stage.name
        folder.mkdir(parents=True, exist_ok=True)
        wall0, cpu0, worked = time.perf_counter(), time.process_time(), False
        try:
            if stage.kind == "clean":
                for setting in stage.settings:
                    part = folder / setting.name
                    if (part / "summary.json").is_file():
                        _check_part_dir(part, _clean_state(stage, setting, study))
                        continue
                    classifier, eps_model = shared_models()
                    worked = True  # count the time of an interrupted part too
                    run_clean_setting(stage, setting, study, part, classifier=classifier, eps_model=eps_model,
                                      device=device, progress=progress)
            else:
                for run in stage.runs:
                    cfg = _eval_config(run, study, base_dir)
                    part = folder / run.name
                    if (part / "results.json").is_file():
                        from freqpure.evaluation.config import EvalConfig

                        done = json.loads((part / "results.json").read_text())
                        if not config_diff(to_dict(from_dict(EvalConfig, done["config"])), to_dict(cfg)):
                            continue
                    worked = True
                    evaluate(cfg, part, resume=True, progress=progress)
        finally:
            if worked:
                _record_time(folder, time.perf_counter() - wall0, time.process_time() - cpu0)
            (folder / "stage.md").write_text(stage_markdown(stage, folder))
    text = [f"# {study.name}", "", f"Models: classifier `{study.classifier}`, diffusion `{study.diffusion}`; "
            f"device {study.device}; seed {study.seed}.", ""]
    text += [stage_markdown(s, out / s.name) for s in study.stages]
    points = clean_vs_robust_points(study, out)
    if points:
        try:
            clean_vs_robust_plot(points, out / "clean-vs-robust.png")
            text.append("![clean vs robust](clean-vs-robust.png)\n")
        except ImportError:  # matplotlib is optional
            pass
    (out / "study.md").write_text("\n".join(text))
    return out / "study.md"
