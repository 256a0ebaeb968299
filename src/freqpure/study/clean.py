"""Clean stages: clean accuracy after one purification, the majority vote and the low-band passthrough of a
purifier setting, recorded per image and resumable (:func:`run_clean_setting`), with the passthrough math."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from freqpure._fileio import write_json_atomic, write_text_atomic
from freqpure.config import (
    build_purifier,
    config_diff,
    to_dict,
    with_resolved_precision,
)
from freqpure.errors import UsageError
from freqpure.evaluation.results import accuracy
from freqpure.evaluation.store import SampleStore
from freqpure.samplers import StepNoise
from freqpure.study.config import PASSTHROUGH_SALT, SettingConfig, StageConfig, StudyConfig


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


def clean_state(stage: StageConfig, setting: SettingConfig, study: StudyConfig) -> dict[str, Any]:
    """What a clean-stage setting's records depend on (saved as config.yaml; a change is refused).

    The purifier's ``precision`` is saved resolved (``auto`` -> what it means on the study's device)."""
    from freqpure.evaluation.distributed import resolve_device

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


def read_study_file(path: Path) -> dict[str, Any]:
    """A mapping file the study wrote (summary.json, timing.json as JSON; a part's config.yaml as YAML);
    a damaged one is one clear error naming it."""
    try:
        text = path.read_text()
        data = yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        raise UsageError(f"{path} cannot be read ({str(err).splitlines()[0]}): it was damaged or edited; restore it "
                         "from a copy or move it aside (the study rewrites it from the records)") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} holds {type(data).__name__}, not the mapping the study writes; restore it "
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


def check_part_dir(folder: Path, state: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    saved_path = folder / "config.yaml"
    if not saved_path.exists():
        found = [name for name in ("samples.jsonl", "vote.jsonl", "summary.json") if (folder / name).exists()]
        if found:
            raise UsageError(f"{folder} holds {', '.join(found)} but no config.yaml: the records' setting is unknown, "
                             "so they cannot be counted for this one; restore config.yaml or choose another --out")
    if saved_path.exists():
        saved = _upgrade_saved_state(read_study_file(saved_path))
        diff = config_diff(saved, json.loads(json.dumps(state)))
        if diff:
            raise UsageError(f"{folder} holds records of a different setting; refusing to mix them. Differences "
                             "(saved -> requested):\n  " + "\n  ".join(diff))
    else:
        write_text_atomic(saved_path, yaml.safe_dump(json.loads(json.dumps(state)), sort_keys=False))


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
    check_part_dir(folder, clean_state(stage, setting, study))
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
    write_json_atomic(folder / "summary.json", summary, fsync=True)
    return summary


def clean_outcomes(folder: Path, file: str, limit: int) -> dict[int, bool]:
    return {i: r["correct"] for i, r in _clean_records(folder, file, limit).items()}
