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
from types import SimpleNamespace
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
from freqpure.evaluation.paired import PairedRow, compare_samples, mcnemar_p
from freqpure.evaluation.results import Accuracy, accuracy, write_json
from freqpure.evaluation.rundir import saved_config
from freqpure.evaluation.store import SampleStore
from freqpure.samplers import StepNoise

__all__ = [
    "SettingConfig",
    "RunConfig",
    "StageConfig",
    "StudyConfig",
    "load_study_config",
    "band_limited_noise",
    "band_passthrough",
    "run_clean_setting",
    "run_study",
    "stage_markdown",
    "clean_vs_robust_points",
    "clean_vs_robust_plot",
]

STAGE_KINDS = ("clean", "evaluate")
# How the passthrough perturbation is drawn: "per-image-v2", one draw per test image from its own stream
# (path: seed, PASSTHROUGH_SALT, test index, band); "batch-shared-v1", the pilot's (one generator seeded with
# the root seed for every batch, so every batch got the same perturbations: kept only to read and resume it).
PASSTHROUGH_NOISE = ("per-image-v2", "batch-shared-v1")
PASSTHROUGH_SALT = 7_000_000


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
    passthrough_noise: str = "per-image-v2"

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
        if self.passthrough_noise not in PASSTHROUGH_NOISE:
            raise UsageError(f"stage {self.name!r}: passthrough_noise must be one of {', '.join(PASSTHROUGH_NOISE)}, "
                             f"got {self.passthrough_noise!r}")
        if not all(isinstance(b, int | float) and math.isfinite(b) for b in self.bands):
            raise UsageError(f"stage {self.name!r}: bands must be finite numbers, got {self.bands}")
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
        from freqpure.evaluation.distributed import check_device_name

        if not self.stages:
            raise UsageError("the study lists no stages: give --config with a study (e.g. configs/study-cifar10.yaml)")
        check_device_name(self.device, "study device")
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
def _paired(a: dict[int, bool], b: dict[int, bool]) -> dict[str, Any]:
    """Correctness of two settings on their common images: discordant counts, exact McNemar p and
    Newcombe's paired 95% interval of the difference ``a - b``."""
    from freqpure.evaluation.paired import newcombe_paired_ci

    common = sorted(set(a) & set(b))
    only_a = sum(a[i] and not b[i] for i in common)
    only_b = sum(b[i] and not a[i] for i in common)
    both = sum(a[i] and b[i] for i in common)
    ci = newcombe_paired_ci(both, only_a, only_b, len(common) - both - only_a - only_b)
    return {"n": len(common), "a_only": only_a, "b_only": only_b, "p": mcnemar_p(only_a, only_b),
            "diff": (only_a - only_b) / len(common) if common else 0.0, "ci": ci}


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


def band_limit(z: Tensor, mask: Tensor, eps: float) -> Tensor:
    """Noise ``z`` ``[B, C, H, W]`` restricted to the centred band ``mask`` ``[H, W]`` and scaled per image to
    L-inf norm ``eps`` (so its spectrum lies in the band exactly, before any clipping); float32."""
    spec = torch.fft.fftshift(torch.fft.fft2(z.double()), dim=(-2, -1)) * mask.to(torch.float64)
    v = torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1))).real
    peak = v.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * (z.dim() - 1)))
    return (eps * v / peak).float()


def band_limited_noise(shape: tuple[int, ...], mask: Tensor, eps: float, generator: torch.Generator) -> Tensor:
    """:func:`band_limit` of Gaussian noise of ``shape`` drawn from ``generator``."""
    return band_limit(torch.randn(shape, generator=generator, dtype=torch.float64), mask, eps)


def passthrough_noise(indices: list[int], like: Tensor, band: int, seed: int) -> Tensor:
    """Standard-normal float64 noise ``[len(indices), C, H, W]`` for the passthrough perturbation of band
    ``band`` (scheme ``per-image-v2``): row ``i`` comes from test image ``indices[i]``'s own stream, so every
    image gets its own draw whatever its batch or position."""
    shape = (len(indices), *like.shape[1:])
    stream = StepNoise(seed).child(PASSTHROUGH_SALT)
    one = torch.empty((1, *like.shape[1:]), dtype=torch.float64)
    return torch.cat([stream.child(int(i))(band, one) for i in indices]).reshape(shape)


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
            "bands": list(stage.bands), "batch_size": stage.batch_size,
            "passthrough_noise": stage.passthrough_noise}


def _upgrade_saved_state(saved: dict[str, Any]) -> dict[str, Any]:
    """A part's saved state as today's code writes it: parts recorded before the purifier had a
    ``precision`` setting ran in fp32 (the only precision there was)."""
    purifier = (saved.get("setting") or {}).get("purifier")
    if isinstance(purifier, dict) and "precision" not in purifier:
        purifier["precision"] = "fp32"
    saved.setdefault("passthrough_noise", "batch-shared-v1")  # parts from before the key: the pilot's draw
    return saved


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file the study wrote (summary.json, timing.json); a damaged one is a clear error."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path} cannot be read ({err}): it was damaged or edited; restore it from a copy or "
                         "move it aside (the study rewrites it from the records)") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} holds {type(data).__name__}, not the JSON object the study writes; restore it "
                         "or move it aside")
    return data


def _clean_records(folder: Path, file: str, limit: int) -> dict[int, dict[str, Any]]:
    """The records of a clean-stage file, each checked: types, ``correct == (pred == label)``, at most ``limit``
    images (the stage's n or vote_n). A record that fails is refused with the file and its index."""
    records = SampleStore(folder / file).load()
    path = folder / file
    if len(records) > limit:
        raise UsageError(f"{path} holds {len(records)} images but its setting measures {limit}: records were "
                         "added by hand or by another study; refusing to count them")
    for i, r in records.items():
        keys = ("label", "pred") if "label" in r or file == "samples.jsonl" else ("pred",)  # old votes: no label
        for key in keys:
            if isinstance(r.get(key), bool) or not isinstance(r.get(key), int):
                raise UsageError(f"{path}: index {i}: {key!r} must be a whole number, got {r.get(key)!r}")
        if not isinstance(r.get("correct"), bool):
            raise UsageError(f"{path}: index {i}: 'correct' must be true or false, got {r.get('correct')!r}")
        if "label" in keys and r["correct"] != (r["pred"] == r["label"]):
            raise UsageError(f"{path}: index {i}: 'correct' is {r.get('correct')!r} but pred {r['pred']} and label "
                             f"{r['label']} say {r['pred'] == r['label']}: the record was edited; refusing it")
        passthrough = r.get("passthrough", {})
        if not isinstance(passthrough, dict) or not all(
                v is None or (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v))
                for v in passthrough.values()):
            raise UsageError(f"{path}: index {i}: 'passthrough' must map bands to finite numbers or null")
    return records


def _check_part_dir(folder: Path, state: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    saved_path = folder / "config.yaml"
    if not saved_path.exists():
        found = [name for name in ("samples.jsonl", "vote.jsonl", "summary.json") if (folder / name).exists()]
        if found:
            raise UsageError(f"{folder} holds {', '.join(found)} but no config.yaml: the records' setting is unknown, "
                             "so they cannot be counted for this one; restore config.yaml or choose another --out")
    if saved_path.exists():
        try:
            loaded = yaml.safe_load(saved_path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise UsageError(f"{saved_path} cannot be read ({str(err).splitlines()[0]}): restore it or choose "
                             "another --out") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"{saved_path} is not the mapping the study writes; restore it or choose another --out")
        saved = _upgrade_saved_state(loaded)
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
                xs = x[measured]
                # the pilot's draw (kept to resume it): the same generator for every batch
                legacy = (torch.Generator().manual_seed(StepNoise(study.seed).child(b).child(7).seed)
                          if stage.passthrough_noise == "batch-shared-v1" else None)
                for k, label in enumerate(labels):
                    z = (torch.randn(tuple(xs.shape), generator=legacy, dtype=torch.float64) if legacy is not None
                         else passthrough_noise([int(data.indices[pos[i]]) for i in measured], xs, k, study.seed))
                    delta = band_limit(z, masks[k], stage.passthrough_eps).to(device)
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
            vote_store.append([{"index": int(vdata.indices[p]), "batch": b, "label": int(y[i]), "pred": int(vpred[i]),
                                "correct": bool(vpred[i] == y[i])} for i, p in enumerate(pos)
                               if int(vdata.indices[p]) not in vote_done])
        wanted = {int(i) for i in vdata.indices}
        vote_records = {i: r for i, r in _clean_records(folder, "vote.jsonl", stage.vote_n).items() if i in wanted}

    records = _clean_records(folder, "samples.jsonl", stage.n)
    recs = [records[int(i)] for i in data.indices]
    summary = {
        "name": setting.name,
        "purifier": to_dict(purifier_cfg),
        "effective": purifier_cfg.effective() if purifier_cfg.method != "none" else None,
        "classifier": study.classifier,
        "n": len(recs),
        "clean": accuracy([r["correct"] for r in recs]),
        "passthrough": {k: _mean_ci([v for r in recs if (v := (r.get("passthrough") or {}).get(k)) is not None])
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
def _outcomes_clean(folder: Path, file: str, limit: int) -> dict[int, bool]:
    return {i: r["correct"] for i, r in _clean_records(folder, file, limit).items()}


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
    lo, hi = p["ci"]
    diff = f"{100 * p['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return f"{p['a_only']}/{p['b_only']}, p {_pvalue(p['p'])}, {diff}"


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


def _record_time(folder: Path, wall: float, cpu: float, *, finished: bool = True, entry: int | None = None) -> int:
    """Add (or, with ``entry``, update) one invocation in ``folder/timing.json``; returns its entry number.

    ``finished: false`` marks an invocation still working, or one killed after its last update."""
    import fcntl

    path = folder / "timing.json"
    with open(folder / ".timing.lock", "a") as guard:  # parallel parts of one stage share the file
        fcntl.flock(guard, fcntl.LOCK_EX)
        return _update_timing(path, wall, cpu, finished, entry)


def _update_timing(path: Path, wall: float, cpu: float, finished: bool, entry: int | None) -> int:
    timing = _read_json(path) if path.is_file() else {"invocations": []}
    if not isinstance(timing.get("invocations"), list):
        raise UsageError(f"{path} has no list of invocations: it was edited; move it aside (the study starts a "
                         "new one)")
    item = {"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_seconds": wall, "cpu_seconds": cpu,
            "threads": torch.get_num_threads(), "completed": finished}
    if entry is None:
        timing["invocations"].append(item)
        entry = len(timing["invocations"]) - 1
    else:
        timing["invocations"][entry] = item
    timing["wall_hours_total"] = sum(i["wall_seconds"] for i in timing["invocations"]) / 3600
    timing["cpu_hours_total"] = sum(i["cpu_seconds"] for i in timing["invocations"]) / 3600
    write_json(path, timing)
    return entry


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
        summ = _read_json(summary_path)
        pur = summ["purifier"]
        desc = pur["method"] if pur["method"] != "freqpure" else \
            f"freqpure r={pur['amp_radius']:g} δ={pur['delta']:g} {pur['variant']}"
        desc += f" {pur['rounds']}"
        pair = vote_pair = None
        if s.compare_to and s.compare_to != s.name and (folder / s.compare_to / "summary.json").is_file():
            pair = _paired(_outcomes_clean(part, "samples.jsonl", stage.n),
                           _outcomes_clean(folder / s.compare_to, "samples.jsonl", stage.n))
            if summ.get("vote") and (folder / s.compare_to / "vote.jsonl").is_file():
                vote_pair = _paired(_outcomes_clean(part, "vote.jsonl", stage.vote_n),
                                    _outcomes_clean(folder / s.compare_to, "vote.jsonl", stage.vote_n))
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


def _environment_text(envs: dict[str, int]) -> str:
    """``{"cuda/bf16": 96, "cpu/fp32": 32}`` → ``'96 cuda/bf16, 32 cpu/fp32'``."""
    return ", ".join(f"{n} {k}" for k, n in envs.items()) or "—"


def _diff_text(row: PairedRow, planned: int) -> tuple[str, str]:
    """The difference with its Newcombe interval, and the smallest difference detectable at this n / planned n."""
    lo, hi = row.diff_ci95
    diff = f"{100 * row.difference:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    detect = []
    for n in dict.fromkeys((row.n, planned)):
        mdd = row.min_detectable(n)
        detect.append(f"n = {n}: " + ("none" if mdd is None else f"{100 * mdd:.1f}"))
    return diff, "; ".join(detect)


def _eval_table(stage: StageConfig, folder: Path) -> str:
    """Every part with records, finished or not (n, classes, device/precision), and its pairings."""
    from freqpure.evaluation.table import attack_settings, defence_settings
    from freqpure.study_parts import class_span, part_summary

    parts = {r.name: part_summary(folder / r.name, name=r.name) if (folder / r.name).is_dir() else None
             for r in stage.runs}
    columns: list[str] = []
    for s in parts.values():
        if s is not None:
            columns += [c for c in s.metrics() if c not in columns and c not in ("clean", "worst case")]
    head = (["run", "defence", "images", "classes", "computed on", "clean"] + [f"`{c}`" for c in columns]
            + ["worst case", "vs paired DiffPure, worst case: b/c, McNemar, difference [95% CI] (points)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    paired_lines = []
    for r in stage.runs:
        s = parts[r.name]
        if s is None:
            lines.append("| " + " | ".join([r.name, "not yet run"] + [""] * (len(head) - 2)) + " |")
            continue
        defence = defence_settings(SimpleNamespace(config=saved_config(folder / r.name)))  # type: ignore[arg-type]
        status = f"{s.n} of {s.planned}" + ("" if s.complete else " (interim)")
        pair_cell = "—"
        base = parts.get(r.compare_to) if r.compare_to and r.compare_to != r.name else None
        if base is not None:
            comparison = compare_samples(s.records, base.records, order=s.metrics())
            labels = [s.records[i].label for i in comparison.common]
            for row in comparison.rows:
                diff, detect = _diff_text(row, s.planned)
                paired_lines.append(f"| {r.name} vs {r.compare_to} | {row.metric} | {row.n} (classes "
                                    f"{class_span(labels)}) | {100 * row.accuracy_a:.1f} vs {100 * row.accuracy_b:.1f} "
                                    f"| {row.only_a}/{row.only_b}, p {_pvalue(row.p)} | {diff} | {detect} |")
                if row.metric == "worst case":
                    pair_cell = f"{row.only_a}/{row.only_b}, p {_pvalue(row.p)}, {diff} (n = {row.n})"
        cells = [r.name, defence, status, class_span(s.labels), _environment_text(s.environments),
                 _pct(s.accuracy("clean"))]
        cells += [_pct(s.accuracy(c)) for c in columns]
        cells += [_pct(s.accuracy("worst case")), pair_cell]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accuracy in % [95% Wilson interval] on the images recorded so far; a part marked interim "
              "covers only the classes listed (the subset is ordered by class). Worst case = correct on the clean "
              "image and on the final image of every attack of the run. b/c = images this run gets right and its "
              "DiffPure run wrong / the reverse, on the images both have (same images, same seeds); p = two-sided "
              "exact McNemar; difference = this run minus DiffPure in points with Newcombe's paired 95% interval."]
    if paired_lines:
        lines += ["", "| pair | metric | common images | accuracy (%) | b/c, McNemar | difference [95% CI] "
                  "(points) | smallest difference detectable (points; power 0.8, observed discordance) |",
                  "|---|---|---|---|---|---|---|", *paired_lines]
    for r in stage.runs:
        if parts[r.name] is not None:
            from freqpure.evaluation.config import AttackConfig

            attacks = (saved_config(folder / r.name) or {}).get("attacks", [])
            lines.append(f"- **{r.name}**: " + "; ".join(
                f"`{from_dict(AttackConfig, a).display()}`: {attack_settings(a)}" for a in attacks))
    return "\n".join(lines)


def _pvalue(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def stage_markdown(stage: StageConfig, folder: Path) -> str:
    """The stage's table (rows not yet run are marked), with planned and spent CPU hours."""
    timing_path = folder / "timing.json"
    timing = _read_json(timing_path) if timing_path.is_file() else None
    planned = "not stated" if stage.planned_cpu_hours is None else f"{stage.planned_cpu_hours:g} CPU hours"
    spent = "nothing run yet" if timing is None else \
        f"{timing['cpu_hours_total']:.2f} CPU hours, {timing['wall_hours_total']:.2f} h wall " \
        f"({len(timing['invocations'])} invocation(s))"
    body = _clean_table(stage, folder) if stage.kind == "clean" else _eval_table(stage, folder)
    return f"## {stage.name}: {stage.title or stage.kind}\n\nPlanned: {planned}. Spent: {spent}.\n\n{body}\n"


def clean_vs_robust_points(study: StudyConfig, out: Path) -> list[dict[str, Any]]:
    """One point per evaluate part with records: ``{"stage", "run", "method", "variant", "clean", "robust",
    "n", "planned", "classes"}`` (worst-case robust accuracy).

    Parts of one stage that share a subset (the same planned n) are all measured on the images every one of
    them has, so that an unfinished part is never set beside another on other images (other classes)."""
    from freqpure.study_parts import class_span, part_summary

    points = []
    for stage in study.stages:
        if stage.kind != "evaluate":
            continue
        found = {}
        for r in stage.runs:
            part = out / stage.name / r.name
            summary = part_summary(part, name=r.name) if part.is_dir() else None
            if summary is not None:
                found[r.name] = summary
        for planned in sorted({s.planned for s in found.values()}):
            group = {name: s for name, s in found.items() if s.planned == planned}
            common = sorted(set.intersection(*(set(s.records) for s in group.values())))
            if not common:
                continue
            for name, s in group.items():
                recs = [s.records[i] for i in common]
                pur = (saved_config(out / stage.name / name) or {}).get("purifier") or {}
                points.append({"stage": stage.name, "run": name, "method": pur.get("method"),
                               "variant": pur.get("variant") or "paper",
                               "clean": sum(r.clean_correct for r in recs) / len(recs),
                               "robust": sum(r.robust for r in recs) / len(recs), "n": len(recs),
                               "planned": planned, "classes": class_span([r.label for r in recs])})
    return points


def clean_vs_robust_plot(points: list[dict[str, Any]], path: str | Path) -> Path | None:
    """PNG scatter of clean vs worst-case robust accuracy, one point per defence/setting (marker = stage,
    colour = DiffPure / FreqPure paper / FreqPure official). ``None`` when there is no point yet."""
    if not points:
        return None
    from freqpure.plots import _figure

    fig, ax = _figure(8.5, 5.5)
    colours = {"diffpure": "#1f77b4", "freqpure/paper": "#2ca02c", "freqpure/official": "#d62728"}
    markers = "osD^v<>"
    stages = list(dict.fromkeys(p["stage"] for p in points))
    seen = set()
    placed: list[tuple[float, float]] = []
    for p in points:
        key = "diffpure" if p["method"] == "diffpure" else f"{p['method']}/{p['variant']}"
        label = key if key not in seen else None
        seen.add(key)
        ax.scatter(100 * p["clean"], 100 * p["robust"], color=colours.get(key, "#7f7f7f"),
                   marker=markers[stages.index(p["stage"]) % len(markers)], label=label, s=40)
        interim = (f" (n = {p['n']} of {p['planned']}, classes {p.get('classes')})"
                   if p.get("n", 0) < p.get("planned", 0) else "")
        xy = (100 * p["clean"], 100 * p["robust"])
        stacked = sum(abs(x - xy[0]) < 0.5 and abs(y - xy[1]) < 0.5 for x, y in placed)  # coincident points
        placed.append(xy)
        ax.annotate(f"{p['stage'].split('-')[0]}/{p['run']}{interim}", xy, fontsize=6,
                    xytext=(4, 3 - 8 * stacked), textcoords="offset points")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("worst-case robust accuracy (%)")
    ax.set_title("clean vs worst-case robust accuracy\n(marker = stage; the runs of a stage on their common images)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def _select(study: StudyConfig, stages: list[str] | None, parts: list[str] | None) -> dict[str, set[str] | None]:
    """The parts to run by stage: ``{stage: None}`` = all of the stage's parts; stages absent are only tabulated.

    ``stages``: stage names; ``parts``: ``STAGE/PART`` names. Unknown names are refused."""
    names = {s.name: [p.name for p in (s.settings if s.kind == "clean" else s.runs)] for s in study.stages}
    unknown = sorted(set(stages or []) - set(names))
    if unknown:
        raise UsageError(f"unknown stage(s) {unknown}; the study has {list(names)}")
    if not stages and not parts:
        return {name: None for name in names}
    chosen: dict[str, set[str] | None] = {name: None for name in stages or []}
    for item in parts or []:
        stage, _, part = item.partition("/")
        if stage not in names or part not in names[stage]:
            raise UsageError(f"unknown part {item!r}: give STAGE/PART, e.g. "
                             f"{next(iter(names))}/{names[next(iter(names))][0]}")
        if chosen.get(stage, set()) is not None:
            chosen.setdefault(stage, set()).add(part)  # type: ignore[union-attr]
    return chosen


class _Clock:
    """The wall and CPU time of this invocation in a stage's timing.json, kept current while it works
    (rewritten every ``interval`` seconds), so a killed invocation's time is counted up to its last beat."""

    def __init__(self, folder: Path, interval: float = 60.0) -> None:
        import threading

        self.folder, self.interval = folder, interval
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        self.entry: int | None = None
        self._lock = threading.Lock()  # the beat and the final write never interleave
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import threading

        if self.entry is not None:
            return
        self.entry = _record_time(self.folder, 0.0, 0.0, finished=False)
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self._write(finished=False)

    def _write(self, finished: bool) -> None:
        with self._lock:
            if self.entry is None:
                return
            _record_time(self.folder, time.perf_counter() - self.wall0, time.process_time() - self.cpu0,
                         finished=finished, entry=self.entry)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._write(finished=True)


def _finish_from_records(part: Path) -> bool:
    """Write results.json of a part whose every record exists but that has none (records made elsewhere,
    or a run stopped between its last batch and its summary), computing nothing. True if written."""
    from freqpure.study_parts import finalize_from_records, part_summary

    if (part / "results.json").is_file() or not (part / "config.yaml").is_file():
        return False
    summary = part_summary(part)
    if summary is None or not summary.complete:
        return False
    from freqpure.errors import RunFolderError
    from freqpure.evaluation.config import EvalConfig

    try:
        finalize_from_records(part, from_dict(EvalConfig, saved_config(part) or {}))
    except RunFolderError:  # another process holds the part (and will summarise it)
        return False
    return True


def run_study(study: StudyConfig, out: str | Path, *, base_dir: str | Path = ".", stages: list[str] | None = None,
              parts: list[str] | None = None, progress: bool = True, execute: bool = True) -> Path:
    """Run (or resume) the stages of ``study`` into ``out``; returns the path of ``study.md``.

    ``stages``: names of the stages to run; ``parts``: ``STAGE/PART`` names to run (default: everything);
    the others are only tabulated. ``execute=False``: run nothing, only rewrite the tables (and write the
    results.json of parts whose every record exists). ``base_dir``: the folder evaluation-config paths of
    ``runs`` are relative to (the study config's).
    """
    import freqpure
    from freqpure.cli.common import resolve_device
    from freqpure.evaluation.lock import RunLock
    from freqpure.evaluation.runner import evaluate

    out, base_dir = Path(out), Path(base_dir)
    chosen = _select(study, stages, parts)
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
        folder = out / stage.name
        if stage.kind == "evaluate" and folder.is_dir():
            for run in stage.runs:  # records made elsewhere (imported) get their results.json here
                _finish_from_records(folder / run.name)
        if not execute or stage.name not in chosen:
            if folder.is_dir():
                (folder / "stage.md").write_text(stage_markdown(stage, folder))
            continue
        wanted = chosen[stage.name]
        folder.mkdir(parents=True, exist_ok=True)
        clock = _Clock(folder)
        try:
            if stage.kind == "clean":
                for setting in stage.settings:
                    if wanted is not None and setting.name not in wanted:
                        continue
                    part = folder / setting.name
                    if (part / "summary.json").is_file():
                        _check_part_dir(part, _clean_state(stage, setting, study))
                        continue
                    classifier, eps_model = shared_models()
                    clock.start()  # count the time of an interrupted part too
                    part.mkdir(parents=True, exist_ok=True)
                    lock = RunLock(part).acquire()  # two studies never write one part
                    try:
                        run_clean_setting(stage, setting, study, part, classifier=classifier, eps_model=eps_model,
                                          device=device, progress=progress)
                    finally:
                        lock.release()
            else:
                for run in stage.runs:
                    if wanted is not None and run.name not in wanted:
                        continue
                    cfg = _eval_config(run, study, base_dir)
                    part = folder / run.name
                    if (part / "results.json").is_file():
                        from freqpure.evaluation.config import EvalConfig
                        from freqpure.evaluation.store import without_environment

                        done = json.loads((part / "results.json").read_text())
                        if not config_diff(without_environment(to_dict(from_dict(EvalConfig, done["config"]))),
                                           without_environment(to_dict(cfg))):
                            continue
                    clock.start()
                    evaluate(cfg, part, resume=True, progress=progress)
        finally:
            clock.stop()
            (folder / "stage.md").write_text(stage_markdown(stage, folder))
    text = [f"# {study.name}", "", f"Models: classifier `{study.classifier}`, diffusion `{study.diffusion}`; "
            f"device {study.device}; seed {study.seed}.", ""]
    text += [stage_markdown(s, out / s.name) for s in study.stages]
    from freqpure.verdict import PRIMARY, verdict_markdown

    if any(s.name == PRIMARY[0] for s in study.stages):  # the study the rule was written for
        text += ["## Verdict by the pre-registered rule", "", verdict_markdown(out), ""]
    points = clean_vs_robust_points(study, out)
    if points:
        try:
            clean_vs_robust_plot(points, out / "clean-vs-robust.png")
            text.append("![clean vs robust](clean-vs-robust.png)\n")
        except ImportError:  # matplotlib is optional
            pass
    (out / "study.md").write_text("\n".join(text))
    return out / "study.md"
