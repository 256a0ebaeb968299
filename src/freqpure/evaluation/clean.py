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

Layout of a clean run folder (the study's ``OUT/STAGE/SETTING``; unchanged since the pilot)::

    config.yaml      the CleanRunConfig (a resume with a different one is refused)
    samples.jsonl    one CleanRecord per image
    vote.jsonl       one VoteRecord per image (settings with ``vote``)
    summary.json     CleanSummary: accuracies with Wilson intervals, passthrough means with intervals

Noise (scheme ``blake2b-philox-v2``): clean batch ``b`` purifies with :func:`clean_batch_stream`, vote batch
``b`` with :func:`vote_batch_stream`, the same for every setting of a stage, so two settings are paired on
images *and* noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from freqpure._fileio import write_json_atomic, write_text_atomic
from freqpure.config import PurifierConfig, build_purifier, config_diff, dump_yaml, to_dict
from freqpure.errors import UsageError
from freqpure.evaluation.lock import RunLock
from freqpure.evaluation.results import Accuracy
from freqpure.evaluation.store import SampleStore, config_fingerprint, numbers_fingerprint, without_environment
from freqpure.noise import StepNoise
from freqpure.passthrough import (
    band_labels,
    band_limit,
    band_masks,
    band_passthrough,
    mean_ci,
    passthrough_noise,
)

__all__ = ["CLEAN_ENVIRONMENT_KEYS", "CLEAN_SCHEMA_VERSION", "CleanRecord", "CleanRunConfig", "CleanSummary",
           "SettingConfig", "VoteRecord", "check_clean_dir", "clean_batch_stream", "clean_outcomes",
           "read_clean_records", "read_clean_summary", "read_mapping_file", "run_clean", "summarise_clean",
           "vote_batch_stream"]

CLEAN_SCHEMA_VERSION = 1
# What a clean run may change between invocations without changing its numbers (each record names its own).
CLEAN_ENVIRONMENT_KEYS = ("device", "setting.purifier.precision")
CLEAN_FILES = ("samples.jsonl", "vote.jsonl", "summary.json")
VOTE_STREAM_OFFSET = 10_000  # vote batch b draws from child 10_000 + b (clean batches: child b; b < 10_000)


def clean_batch_stream(seed: int, batch: int) -> StepNoise:
    """The purification noise of clean batch ``batch`` (path ``(seed, batch)``)."""
    return StepNoise(seed).child(batch)


def vote_batch_stream(seed: int, batch: int) -> StepNoise:
    """The ensemble noise of vote batch ``batch`` (path ``(seed, 10_000 + batch)``)."""
    if not 0 <= batch < VOTE_STREAM_OFFSET:
        raise UsageError(f"vote batch {batch} is outside [0, {VOTE_STREAM_OFFSET}): its stream would collide with "
                         "a clean batch's")
    return StepNoise(seed).child(VOTE_STREAM_OFFSET + batch)


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
        import json

        return json.loads(json.dumps(to_dict(self)))


def _upgrade_saved(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config.yaml as today's code writes it: runs recorded before the purifier had a ``precision``
    ran in fp32 (the only precision there was); before ``passthrough_noise`` they drew the pilot's way."""
    purifier = (saved.get("setting") or {}).get("purifier")
    if isinstance(purifier, dict) and "precision" not in purifier:
        purifier["precision"] = "fp32"
    saved.setdefault("passthrough_noise", "batch-shared-v1")
    return saved


def read_mapping_file(path: Path) -> dict[str, Any]:
    """A mapping file a run wrote (``.json`` as JSON, ``.yaml`` as YAML); a damaged one is one clear error."""
    import json

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


# ---------------------------------------------------------------------------------------------
# Typed records
# ---------------------------------------------------------------------------------------------
_MARKS = ("config_sha256", "numbers_sha256", "device", "precision")


def _whole(raw: dict[str, Any], key: str, where: str) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{where}: {key!r} must be a whole number, got {value!r}")
    return value


def _flag(raw: dict[str, Any], key: str, where: str) -> bool:
    value = raw.get(key)
    if not isinstance(value, bool):
        raise UsageError(f"{where}: {key!r} must be true or false, got {value!r}")
    return value


def _check_correct(label: int, pred: int, correct: bool, where: str) -> None:
    if correct != (pred == label):
        raise UsageError(f"{where}: 'correct' is {correct!r} but pred {pred} and label {label} say "
                         f"{pred == label}: the record was edited; refusing it")


def _unknown(raw: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    extra = sorted(set(raw) - set(known) - set(_MARKS))
    if extra:
        raise UsageError(f"{where}: unknown field(s) {extra}: the record was not written by a clean run")


@dataclass(frozen=True)
class CleanRecord:
    """One image of a clean run: its label, the prediction after one purification and, for the first
    ``passthrough_n`` images, the passthrough per band (``None`` where not measured)."""

    index: int
    batch: int
    label: int
    pred: int
    correct: bool
    passthrough: dict[str, float | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "batch": self.batch, "label": self.label, "pred": self.pred,
                "correct": self.correct, "passthrough": dict(self.passthrough)}

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str) -> CleanRecord:
        _unknown(raw, ("index", "batch", "label", "pred", "correct", "passthrough"), where)
        label, pred, correct = _whole(raw, "label", where), _whole(raw, "pred", where), _flag(raw, "correct", where)
        _check_correct(label, pred, correct, where)
        passthrough = raw.get("passthrough", {})
        if not isinstance(passthrough, dict) or not all(
                v is None or (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v))
                for v in passthrough.values()):
            raise UsageError(f"{where}: 'passthrough' must map bands to finite numbers or null")
        return cls(_whole(raw, "index", where), _whole(raw, "batch", where), label, pred, correct, dict(passthrough))


@dataclass(frozen=True)
class VoteRecord:
    """One image of a clean run's majority vote. ``label`` is ``None`` in the pilot's records (written
    before votes named it; their ``correct`` was computed from it then)."""

    index: int
    batch: int
    pred: int
    correct: bool
    label: int | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"index": self.index, "batch": self.batch, "pred": self.pred, "correct": self.correct}
        return out if self.label is None else {**out, "label": self.label}

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str) -> VoteRecord:
        _unknown(raw, ("index", "batch", "label", "pred", "correct"), where)
        pred, correct = _whole(raw, "pred", where), _flag(raw, "correct", where)
        label = _whole(raw, "label", where) if "label" in raw else None
        if label is not None:
            _check_correct(label, pred, correct, where)
        return cls(_whole(raw, "index", where), _whole(raw, "batch", where), pred, correct, label)


def _store(folder: Path, file: str, cfg: CleanRunConfig | None = None, *, device: str = "cpu") -> SampleStore:
    """The store of ``folder/file``; with ``cfg``, stamping new records with its fingerprints (records without
    marks, written before clean runs had them, belong to the folder's config.yaml, which was checked)."""
    if cfg is None:
        return SampleStore(folder / file)
    d = cfg.as_dict()
    return SampleStore(folder / file, fingerprint=config_fingerprint({**d, "device": device}),
                       numbers=numbers_fingerprint(d, CLEAN_ENVIRONMENT_KEYS))


def read_clean_records(folder: str | Path, file: str, limit: int) -> dict[int, CleanRecord | VoteRecord]:
    """The records of ``samples.jsonl`` (:class:`CleanRecord`) or ``vote.jsonl`` (:class:`VoteRecord`) by test
    index, each checked (types, ``correct == (pred == label)``, at most ``limit`` images); a record that fails
    is refused with the file and its index."""
    folder = Path(folder)
    path = folder / file
    raw = SampleStore(path).load()
    if len(raw) > limit:
        raise UsageError(f"{path} holds {len(raw)} images but its setting measures {limit}: records were "
                         "added by hand or by another study; refusing to count them")
    kind = CleanRecord if file == "samples.jsonl" else VoteRecord
    return {i: kind.from_json(r, f"{path}: index {i}") for i, r in raw.items()}


def clean_outcomes(folder: str | Path, file: str, limit: int) -> dict[int, bool]:
    """``{test index: correct}`` of a clean run's ``samples.jsonl`` or ``vote.jsonl``."""
    return {i: r.correct for i, r in read_clean_records(folder, file, limit).items()}


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CleanSummary:
    """``summary.json`` of a clean run (schema :data:`CLEAN_SCHEMA_VERSION`; files without the key are 1)."""

    name: str
    purifier: dict[str, Any]
    effective: dict[str, Any] | None
    classifier: str
    n: int
    clean: Accuracy
    passthrough: dict[str, dict[str, float | None]]  # band -> {mean, lo, hi, n} (null: no image measured)
    passthrough_eps: float
    vote: Accuracy | None = None
    vote_k: int | None = None
    schema_version: int = CLEAN_SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "purifier": self.purifier, "effective": self.effective,
                "classifier": self.classifier, "n": self.n, "clean": self.clean.to_dict(),
                "passthrough": self.passthrough, "passthrough_eps": self.passthrough_eps,
                "vote": None if self.vote is None else self.vote.to_dict(), "vote_k": self.vote_k,
                "schema_version": self.schema_version}

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str) -> CleanSummary:
        version = raw.get("schema_version", 1)
        if version != CLEAN_SCHEMA_VERSION:
            raise UsageError(f"{where}: schema_version {version!r} is not one this freqpure reads "
                             f"({CLEAN_SCHEMA_VERSION}); upgrade freqpure")
        try:
            passthrough = {str(k): dict(v) for k, v in raw["passthrough"].items()}
            return cls(str(raw["name"]), dict(raw["purifier"]), raw.get("effective"), str(raw["classifier"]),
                       int(raw["n"]), Accuracy.from_dict(raw["clean"]), passthrough, float(raw["passthrough_eps"]),
                       Accuracy.from_dict(raw["vote"]) if raw.get("vote") else None, raw.get("vote_k"), version)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UsageError(f"{where} is not a clean run's summary ({type(err).__name__}: {err}); restore it or "
                             "move it aside (the study rewrites it from the records)") from None


def read_clean_summary(folder: str | Path) -> CleanSummary:
    """The typed ``summary.json`` of clean run ``folder``."""
    path = Path(folder) / "summary.json"
    return CleanSummary.from_json(read_mapping_file(path), str(path))


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
    legacy = (torch.Generator().manual_seed(cfg.seed)
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
