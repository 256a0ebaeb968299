"""The records of a clean run (:mod:`freqpure.evaluation.clean`), typed and checked on read.

``samples.jsonl`` holds one :class:`CleanRecord` per image, ``vote.jsonl`` one :class:`VoteRecord`, ``summary.json``
a :class:`CleanSummary` (schema :data:`CLEAN_SCHEMA_VERSION`). Every reader refuses an edited or foreign record
with its file and index; records carry the marks of :mod:`freqpure.evaluation.store` (fingerprints, device,
precision) besides their fields.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from freqpure.errors import UsageError
from freqpure.evaluation.results import Accuracy
from freqpure.evaluation.store import SampleStore
from freqpure.presets import current_value

__all__ = ["CLEAN_SCHEMA_VERSION", "CleanRecord", "CleanSummary", "VoteRecord", "clean_outcomes",
           "read_clean_records", "read_clean_summary", "read_mapping_file"]

CLEAN_SCHEMA_VERSION = 1


def read_mapping_file(path: Path) -> dict[str, Any]:
    """A mapping file a run wrote (``.json`` as JSON, ``.yaml`` as YAML); a damaged one is one clear error."""
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
            return cls(str(raw["name"]), _current(raw["purifier"]), _current(raw.get("effective")),
                       str(raw["classifier"]), int(raw["n"]), Accuracy.from_dict(raw["clean"]), passthrough,
                       float(raw["passthrough_eps"]),
                       Accuracy.from_dict(raw["vote"]) if raw.get("vote") else None, raw.get("vote_k"), version)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UsageError(f"{where} is not a clean run's summary ({type(err).__name__}: {err}); restore it or "
                             "move it aside (the study rewrites it from the records)") from None


def _current(settings: dict[str, Any] | None) -> dict[str, Any] | None:
    """Purifier settings (or their effective values) with old spellings in today's (``mode: reference`` was
    ``official``): summaries written before the rename read like new ones."""
    return None if settings is None else {k: current_value(k, v) for k, v in dict(settings).items()}


def read_clean_summary(folder: str | Path) -> CleanSummary:
    """The typed ``summary.json`` of clean run ``folder``."""
    path = Path(folder) / "summary.json"
    return CleanSummary.from_json(read_mapping_file(path), str(path))
