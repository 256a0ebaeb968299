"""Clean runs: evaluation runs of their own kind, without an attack.

A clean run measures one purifier setting on clean test images: its accuracy after one purification
(``samples.jsonl``, ``n`` images), the low-band passthrough of the first ``passthrough_n`` of them (the same
records; :mod:`freqpure.passthrough`) and, for headline settings, the majority vote of ``vote_k``
purifications (``vote.jsonl``, ``vote_n`` images). It is claimed, resumed and checked like an attack
evaluation: one lock per folder (:class:`~freqpure.evaluation.lock.RunLock`), the full configuration in
``config.yaml`` (a resume with another configuration is refused), records appended batch by batch through
:class:`~freqpure.evaluation.store.SampleStore` stamped with the configuration's fingerprints, the device and
the precision (a run may continue on another device or precision, like an evaluation). ``summary.json`` is
written from the records at the end.

Layout of a clean run folder (the study's ``OUT/STAGE/SETTING``; unchanged since the pilot; the typed records:
:mod:`freqpure.evaluation.clean_records`)::

    config.yaml      the CleanRunConfig (a resume with a different one is refused)
    samples.jsonl    one CleanRecord per image
    vote.jsonl       one VoteRecord per image (settings with ``vote``)
    summary.json     CleanSummary: accuracies with Wilson intervals, passthrough means with intervals

Noise (scheme ``blake2b-philox-v2``): clean batch ``b`` purifies with :func:`freqpure.noise.clean_batch_stream`,
vote batch ``b`` with :func:`freqpure.noise.vote_batch_stream`, the same for every setting of a stage, so two
settings are paired on images *and* noise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from freqpure._fileio import write_json_atomic, write_text_atomic
from freqpure.config import PurifierConfig, build_purifier, config_diff, dump_yaml, spelled_before, to_dict
from freqpure.errors import UsageError
from freqpure.evaluation.clean_records import (
    CleanRecord,
    CleanSummary,
    VoteRecord,
    clean_outcomes,
    read_clean_records,
    read_clean_summary,
    read_mapping_file,
)
from freqpure.evaluation.lock import RunLock
from freqpure.evaluation.results import Accuracy
from freqpure.evaluation.store import SampleStore, config_fingerprint, numbers_fingerprint, without_environment
from freqpure.noise import StepNoise, clean_batch_stream, pilot_passthrough_generator, vote_batch_stream
from freqpure.passthrough import (
    band_labels,
    band_limit,
    band_masks,
    band_passthrough,
    mean_ci,
    passthrough_noise,
)
from freqpure.presets import current_value

__all__ = ["CLEAN_ENVIRONMENT_KEYS", "CleanRecord", "CleanRunConfig", "CleanSummary",
           "SettingConfig", "VoteRecord", "check_clean_dir", "clean_outcomes", "read_clean_records",
           "read_clean_summary", "read_mapping_file", "run_clean", "summarise_clean"]

# What a clean run may change between invocations without changing its numbers (each record names its own).
CLEAN_ENVIRONMENT_KEYS = ("device", "setting.purifier.precision")
CLEAN_FILES = ("samples.jsonl", "vote.jsonl", "summary.json")


@dataclass
class SettingConfig:
    """One purifier setting of a clean stage.

    ``compare_to``: the name of the setting it is paired with (its DiffPure row); ``vote``: also
    measure the majority vote of the stage's ``vote_k`` purifications (headline rows).
    """

    name: str = "setting"
    purifier: PurifierConfig = field(default_factory=PurifierConfig)
    compare_to: str | None = None
    vote: bool = False


@dataclass
class CleanRunConfig:
    """Everything a clean run's numbers depend on (saved as its ``config.yaml``).

    ``setting.purifier.precision`` is saved resolved (``auto`` → what it means on the device); the purifier's
    diffusion model is ``diffusion``. ``passthrough_noise``: ``per-image-v2`` or the pilot's
    ``batch-shared-v1`` (:data:`freqpure.passthrough.PASSTHROUGH_NOISE`).
    """

    setting: SettingConfig
    classifier: str
    diffusion: str
    seed: int = 0
    data_dir: str | None = None
    n: int = 1000
    vote_n: int = 256
    vote_k: int = 10
    passthrough_n: int = 256
    passthrough_eps: float = 8 / 255
    bands: list[float] = field(default_factory=lambda: [3.0, 8.0])
    batch_size: int = 32
    passthrough_noise: str = "per-image-v2"

    @property
    def purifier(self) -> PurifierConfig:
        """The purifier this run builds (the setting's, on the run's diffusion model)."""
        return replace(self.setting.purifier, diffusion=self.diffusion)

    def as_dict(self) -> dict[str, Any]:
        """The plain dict saved as config.yaml (JSON-normalised: lists, floats)."""
        return json.loads(json.dumps(to_dict(self)))


def _upgrade_saved(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config.yaml as today's code writes it: runs recorded before the purifier had a ``precision``
    ran in fp32 (the only precision there was); before ``passthrough_noise`` they drew the pilot's way; an old
    spelling of a purifier value (``mode: reference``) reads in today's (``official``)."""
    purifier = (saved.get("setting") or {}).get("purifier")
    if isinstance(purifier, dict) and "precision" not in purifier:
        purifier["precision"] = "fp32"
    if isinstance(purifier, dict):
        for key, value in purifier.items():
            purifier[key] = current_value(key, value)
    saved.setdefault("passthrough_noise", "batch-shared-v1")
    return saved


def _saved_state(folder: Path) -> dict[str, Any] | None:
    path = folder / "config.yaml"
    return _upgrade_saved(read_mapping_file(path)) if path.exists() else None


def check_clean_dir(folder: str | Path, cfg: CleanRunConfig, *, write: bool = True) -> None:
    """Check (and, with ``write``, claim) clean run folder ``folder`` for ``cfg``.

    Refused: records without a config.yaml (their setting is unknown) and a config.yaml of another
    configuration (device and precision aside). A new folder gets ``cfg``'s config.yaml, written atomically.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    saved = _saved_state(folder)
    if saved is None:
        found = [name for name in CLEAN_FILES if (folder / name).exists()]
        if found:
            raise UsageError(f"{folder} holds {', '.join(found)} but no config.yaml: the records' setting is unknown, "
                             "so they cannot be counted for this one; restore config.yaml or choose another --out")
        if write:
            write_text_atomic(folder / "config.yaml", dump_yaml(cfg))
        return
    diff = config_diff(without_environment(saved, CLEAN_ENVIRONMENT_KEYS),
                       without_environment(cfg.as_dict(), CLEAN_ENVIRONMENT_KEYS))
    if diff:
        raise UsageError(f"{folder} holds records of a different setting; refusing to mix them. Differences "
                         "(saved -> requested):\n  " + "\n  ".join(diff))


def _store(folder: Path, file: str, cfg: CleanRunConfig, *, device: str) -> SampleStore:
    """The store of ``folder/file`` for ``cfg``: new records get its fingerprints; records of the same numbers from
    any device or precision are accepted, and so are records without marks (written before clean runs had them:
    they belong to the folder's config.yaml, which was checked), and records written when the setting was spelled
    otherwise (``mode: reference``; :func:`~freqpure.config.spelled_before`)."""
    d = cfg.as_dict()
    old = spelled_before(d, "setting.purifier")
    legacy = set() if old is None else {config_fingerprint({**old, "device": device})}
    legacy_numbers = set() if old is None else {numbers_fingerprint(old, CLEAN_ENVIRONMENT_KEYS)}
    return SampleStore(folder / file, fingerprint=config_fingerprint({**d, "device": device}),
                       numbers=numbers_fingerprint(d, CLEAN_ENVIRONMENT_KEYS), legacy=frozenset(legacy),
                       legacy_numbers=frozenset(legacy_numbers))


def summarise_clean(folder: Path, cfg: CleanRunConfig, indices: list[int],
                    vote_indices: list[int] | None) -> CleanSummary:
    """The summary of a finished clean run from its records alone: the images ``indices`` (in that order) and,
    for a setting with a vote, ``vote_indices``."""
    labels = band_labels(list(cfg.bands))
    records = read_clean_records(folder, "samples.jsonl", cfg.n)
    recs = [r for i in indices if isinstance(r := records[i], CleanRecord)]
    vote = None
    if vote_indices is not None:
        votes = read_clean_records(folder, "vote.jsonl", cfg.vote_n)
        vote = Accuracy.of([votes[i].correct for i in vote_indices if i in votes])
    purifier = cfg.purifier
    return CleanSummary(
        name=cfg.setting.name, purifier=to_dict(purifier),
        effective=purifier.effective() if purifier.method != "none" else None,
        classifier=cfg.classifier, n=len(recs), clean=Accuracy.of([r.correct for r in recs]),
        passthrough={k: mean_ci([r.passthrough.get(k) for r in recs]) for k in labels},
        passthrough_eps=cfg.passthrough_eps, vote=vote if vote is not None and vote.n else None,
        vote_k=cfg.vote_k if vote is not None and vote.n else None)


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def _passthrough_batch(purifier: Any, x: torch.Tensor, clean_purified: torch.Tensor, measured: list[int],
                       indices: list[int], noise: StepNoise, cfg: CleanRunConfig,
                       masks: torch.Tensor) -> dict[str, list[float]]:
    """Passthrough of rows ``measured`` of batch ``x`` per band: each perturbed image is purified within the
    whole batch with the clean purification's noise, so the response measures the perturbation alone."""
    labels = band_labels(list(cfg.bands))
    xs = x[measured]
    # the pilot's draw (kept to resume it): a generator seeded with the root seed, the same for every batch
    legacy = (pilot_passthrough_generator(cfg.seed)
              if cfg.passthrough_noise == "batch-shared-v1" else None)
    out: dict[str, list[float]] = {}
    for k, label in enumerate(labels):
        z = (torch.randn(tuple(xs.shape), generator=legacy, dtype=torch.float64) if legacy is not None
             else passthrough_noise([indices[i] for i in measured], xs, k, cfg.seed))
        delta = band_limit(z, masks[k], cfg.passthrough_eps).to(x.device)
        x_pert = (xs + delta).clamp(0, 1)
        full = x.clone()
        full[measured] = x_pert
        response = purifier(full, noise=noise)[measured] - clean_purified[measured]
        out[label] = band_passthrough((x_pert - xs).cpu(), response.cpu(), masks[k]).tolist()
    return out


def _batches(n: int, size: int) -> list[list[int]]:
    return [list(range(s, min(s + size, n))) for s in range(0, n, size)]


def run_clean(cfg: CleanRunConfig, folder: str | Path, *, classifier: torch.nn.Module, eps_model: Any,
              device: torch.device, progress: bool = False) -> CleanSummary:
    """Run or resume clean run ``cfg`` in ``folder`` (locked for the run); returns its summary (also written
    as ``summary.json``). Only batches with an unrecorded image are computed."""
    from tqdm.auto import tqdm

    from freqpure.evaluation.components import load_eval_data
    from freqpure.evaluation.config import DataConfig
    from freqpure.purifiers import PurifiedClassifier

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = RunLock(folder).acquire()  # two processes never write one run
    try:
        check_clean_dir(folder, cfg)
        purifier_cfg = cfg.purifier
        purifier = build_purifier(purifier_cfg, eps_model, seed=cfg.seed) if purifier_cfg.method != "none" else None
        marks = {"device": torch.device(device).type, "precision": purifier_cfg.precision}
        store = _store(folder, "samples.jsonl", cfg, device=marks["device"])
        store.repair()
        done = store.load()
        data = load_eval_data(DataConfig(n=cfg.n, data_dir=cfg.data_dir))
        indices = [int(i) for i in data.indices]
        todo = [pos for pos in _batches(len(indices), cfg.batch_size) if not all(indices[p] in done for p in pos)]
        labels = band_labels(list(cfg.bands))
        masks = None
        for pos in tqdm(todo, desc=f"clean/{cfg.setting.name}", disable=not progress, unit="batch"):
            b = pos[0] // cfg.batch_size
            x, y = data.images(pos).to(device), data.labels[pos].to(device)
            noise = clean_batch_stream(cfg.seed, b)
            with torch.no_grad():
                clean_p = purifier(x, noise=noise) if purifier is not None else x
                pred = classifier(clean_p).argmax(1)
                measured = [i for i, p in enumerate(pos) if p < cfg.passthrough_n]
                values: dict[str, list[float]] = {}
                if measured and purifier is not None:
                    masks = band_masks(x.shape[-2], x.shape[-1], list(cfg.bands)) if masks is None else masks
                    values = _passthrough_batch(purifier, x, clean_p, measured, [indices[p] for p in pos], noise,
                                                cfg, masks)
            row = {i: j for j, i in enumerate(measured)}
            store.append([{**CleanRecord(indices[p], b, int(y[i]), int(pred[i]), bool(pred[i] == y[i]),
                                         {k: values[k][row[i]] if values and i in row else None
                                          for k in labels}).to_json(), **marks}
                          for i, p in enumerate(pos) if indices[p] not in done])

        vote_indices = None
        if cfg.setting.vote and purifier is not None:
            vote_store = _store(folder, "vote.jsonl", cfg, device=marks["device"])
            vote_store.repair()
            vote_done = vote_store.load()
            vdata = load_eval_data(DataConfig(n=cfg.vote_n, data_dir=cfg.data_dir))
            vote_indices = [int(i) for i in vdata.indices]
            voter = PurifiedClassifier(classifier, purifier, ensemble=cfg.vote_k, vote="majority")
            for pos in _batches(len(vote_indices), cfg.batch_size):
                if all(vote_indices[p] in vote_done for p in pos):
                    continue
                b = pos[0] // cfg.batch_size
                x, y = vdata.images(pos).to(device), vdata.labels[pos].to(device)
                with torch.no_grad():
                    vpred = voter(x, vote_batch_stream(cfg.seed, b)).argmax(1)
                vote_store.append([{**VoteRecord(vote_indices[p], b, int(vpred[i]), bool(vpred[i] == y[i]),
                                                 int(y[i])).to_json(), **marks}
                                   for i, p in enumerate(pos) if vote_indices[p] not in vote_done])
        summary = summarise_clean(folder, cfg, indices, vote_indices)
        write_json_atomic(folder / "summary.json", summary.to_json(), fsync=True)
        return summary
    finally:
        lock.release()
