"""Typed evaluation records: :class:`Results` (``results.json``), :class:`SampleRecord` (one line of
``samples.jsonl``) and their parts (:class:`Accuracy`, :class:`AttackOutcome`, :class:`Timings`), with the
Wilson interval that summarises them and the reader of a ``samples.jsonl``.

Schema versions and the strict check of a record live one floor down in :mod:`freqpure.evaluation.schema`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from freqpure.errors import UsageError
from freqpure.evaluation.schema import (
    LEGACY_NOISE_SCHEME,
    SCHEMA_VERSION,
    current_schema,
    require_keys,
    upgrade_sample_v0,
    validate_sample,
)
from freqpure.formatting import interval, percent

__all__ = ["wilson_interval", "accuracy", "Accuracy", "AttackOutcome", "SampleRecord", "Timings", "Results",
           "upgrade_results_v0", "read_sample_records"]


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for ``k`` successes out of ``n`` (``(0, 1)`` for ``n = 0``)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


@dataclass(frozen=True)
class Accuracy:
    """``correct`` of ``n``; ``accuracy`` = correct / n (NaN for n = 0); ``ci95`` the 95% Wilson interval."""

    correct: int
    n: int
    accuracy: float
    ci95: tuple[float, float]

    @classmethod
    def of(cls, flags: list[bool]) -> Accuracy:
        k, n = int(sum(bool(f) for f in flags)), len(flags)
        return cls(k, n, k / n if n else float("nan"), wilson_interval(k, n))

    @classmethod
    def from_dict(cls, data: Any, where: str = "accuracy") -> Accuracy:
        d = require_keys(data, ("correct", "n"), where)
        k, n = d["correct"], d["n"]
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (k, n)) or not 0 <= k <= n:
            raise UsageError(f"{where}: correct = {k!r} of n = {n!r} is not a count (whole numbers, 0 <= correct "
                             "<= n): the file was edited or damaged; re-run the evaluation")
        exact = k / n if n else float("nan")
        acc = d.get("accuracy")
        number = isinstance(acc, int | float) and not isinstance(acc, bool)
        if n and "accuracy" in d and not (number and abs(acc - exact) <= 1e-9):
            raise UsageError(f"{where}: accuracy {acc!r} is not correct / n = {k}/{n}: the file was edited or "
                             "damaged; re-run the evaluation")
        lo, hi = wilson_interval(k, n)
        ci = d.get("ci95")
        if ci is not None and not (isinstance(ci, list | tuple) and len(ci) == 2 and all(
                isinstance(v, int | float) and not isinstance(v, bool) and abs(v - w) <= 1e-6
                for v, w in zip(ci, (lo, hi)))):
            raise UsageError(f"{where}: ci95 {ci!r} is not the 95% Wilson interval of {k}/{n} "
                             f"([{lo:.4f}, {hi:.4f}]): the file was edited or damaged; re-run the evaluation")
        return cls(k, n, exact, (lo, hi))

    def to_dict(self) -> dict[str, Any]:
        return {"correct": self.correct, "n": self.n, "accuracy": self.accuracy, "ci95": list(self.ci95)}

    def percent(self) -> str:
        """``"84.6% [81.2, 87.4]"``."""
        return f"{percent(self.accuracy)} {interval(self.ci95)}"


def accuracy(flags: list[bool]) -> dict[str, Any]:
    """``{"correct", "n", "accuracy", "ci95": [lo, hi]}`` for a list of per-sample booleans."""
    return Accuracy.of(flags).to_dict()


@dataclass(frozen=True)
class AttackOutcome:
    """One attack on one sample: the defence's prediction on the final adversarial image and its size."""

    pred: int
    correct: bool
    linf: float
    l2: float
    loss: float | None = None
    grad_norm: float | None = None
    seconds: float | None = None  # attack seconds per sample of its batch (None: written before it existed)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> AttackOutcome:
        d = require_keys(data, ("pred", "correct", "linf", "l2"), where)
        return cls(int(d["pred"]), bool(d["correct"]), float(d["linf"]), float(d["l2"]), d.get("loss"),
                   d.get("grad_norm"), d.get("seconds"))


@dataclass(frozen=True)
class SampleRecord:
    """One line of ``samples.jsonl``: one test image's outcome under the defence.

    ``index``: index into the test split; ``position``: place in the evaluated subset; ``attacks``: by
    attack label; ``robust``: correct on the clean image and under every attack; ``undefended``: the
    bare classifier's correctness under the sanity PGD, by ``"norm-eps"``; ``seconds``: per-sample
    shares of the batch's ``attack``/``judge``/``sanity``/``total`` time.
    """

    index: int
    position: int
    batch: int
    label: int
    clean_pred: int
    clean_correct: bool
    attacks: dict[str, AttackOutcome]
    robust: bool
    undefended: dict[str, bool] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    device: str | None = None  # the device type that computed this record's batch ("cpu", "cuda"); None: older
    precision: str | None = None  # the purifier precision it ran at ("fp32", "bf16"); None: older record
    noise_scheme: str | None = None  # the noise scheme it drew with; None: a record from before the field

    @classmethod
    def from_dict(cls, data: Any, where: str = "sample") -> SampleRecord:
        validate_sample(data, where)  # strict types and derived fields (see validate_sample)
        d = require_keys(data, ("index", "label", "clean_pred", "clean_correct", "attacks", "robust"), where)
        d = current_schema(d, upgrade_sample_v0, where)
        attacks = {str(k): AttackOutcome.from_dict(v, f"{where}.attacks.{k}") for k, v in d["attacks"].items()}
        return cls(int(d["index"]), int(d.get("position", -1)), int(d.get("batch", -1)), int(d["label"]),
                   int(d["clean_pred"]), bool(d["clean_correct"]), attacks, bool(d["robust"]),
                   {str(k): bool(v) for k, v in (d.get("undefended") or {}).items()},
                   {str(k): float(v) for k, v in (d.get("seconds") or {}).items()},
                   device=None if d.get("device") is None else str(d["device"]),
                   precision=None if d.get("precision") is None else str(d["precision"]),
                   noise_scheme=None if d.get("noise_scheme") is None else str(d["noise_scheme"]))

    def to_dict(self) -> dict[str, Any]:
        """The stored line (``samples.jsonl``; the store adds the fingerprints): every field, except ``device``,
        ``precision`` and ``noise_scheme`` while unknown (records from before them never had the keys)."""
        out = asdict(self)
        for key in ("device", "precision", "noise_scheme"):
            if out[key] is None:
                del out[key]
        return out

    def outcomes(self) -> dict[str, bool]:
        """Correctness per metric: ``clean``, each attack label, and ``worst case`` (= ``robust``)."""
        out = {"clean": self.clean_correct}
        out.update({label: a.correct for label, a in self.attacks.items()})
        out["worst case"] = self.robust
        return out


def _same_outcome(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two records of one index agree on what was predicted (their timings may differ)."""
    def preds(r: dict[str, Any]) -> tuple[Any, ...]:
        return r["label"], r["clean_pred"], sorted((k, v["pred"]) for k, v in r["attacks"].items())
    return preds(a) == preds(b)


def read_sample_records(path: str | Path, *, require_fingerprint: bool = False,
                        attack_labels: Iterable[str] | None = None,
                        undefended_keys: Iterable[str] | None = None) -> dict[int, SampleRecord]:
    """``{index: SampleRecord}`` of a ``samples.jsonl``, every line checked by :func:`validate_sample`.

    As :class:`~freqpure.evaluation.store.SampleStore` reads it: a torn last line (no newline: a kill in
    the middle of a write) is skipped and the first record of an index wins; but a complete line that is
    not a valid record, or a second record of an index with other predictions, is refused naming the
    file and line.
    """
    path = Path(path)
    labels = None if attack_labels is None else tuple(attack_labels)
    keys = None if undefended_keys is None else tuple(undefended_keys)
    raw: dict[int, tuple[int, dict[str, Any]]] = {}
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                break  # torn tail
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise UsageError(f"{where}: not a JSON record; this line was edited or damaged: restore the file "
                                 "or re-run the evaluation into a new --out") from None
            rec = validate_sample(data, where, require_fingerprint=require_fingerprint, attack_labels=labels,
                                  undefended_keys=keys)
            first = raw.setdefault(rec["index"], (number, rec))
            if first[1] is not rec and not _same_outcome(first[1], rec):
                raise UsageError(f"{where}: index {rec['index']} was already recorded on line {first[0]} with other "
                                 "predictions; the file was edited or mixes runs: restore it or re-run the evaluation")
    return {i: SampleRecord.from_dict(rec, f"{path}:{number}") for i, (number, rec) in raw.items()}


@dataclass(frozen=True)
class Timings:
    """Batch work per sample (seconds) and the wall time of the invocation that finished the run."""

    sample_seconds_total: float
    seconds_per_sample: float
    attack_seconds_per_sample: float
    judge_seconds_per_sample: float
    sanity_seconds_per_sample: float
    per_attack_seconds_per_sample: dict[str, float | None]
    this_invocation_wall_seconds: float

    @classmethod
    def from_dict(cls, data: Any, where: str = "timings") -> Timings:
        d = require_keys(data, ("sample_seconds_total", "seconds_per_sample"), where)

        def seconds(key: str) -> float:  # null (a NaN written as JSON) or absent: NaN
            value = d.get(key)
            if value is None:
                return float("nan")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"{where}: {key} must be a number of seconds, got {value!r}")
            return float(value)

        per_attack = d.get("per_attack_seconds_per_sample") or {}
        if not isinstance(per_attack, dict) or any(
                v is not None and (isinstance(v, bool) or not isinstance(v, int | float)) for v in per_attack.values()):
            raise UsageError(f"{where}: per_attack_seconds_per_sample must map attacks to seconds, got {per_attack!r}")
        return cls(seconds("sample_seconds_total"), seconds("seconds_per_sample"), seconds("attack_seconds_per_sample"),
                   seconds("judge_seconds_per_sample"), seconds("sanity_seconds_per_sample"), dict(per_attack),
                   seconds("this_invocation_wall_seconds"))


@dataclass(frozen=True)
class Results:
    """``results.json`` of one evaluation run (schema :data:`SCHEMA_VERSION`).

    ``per_attack`` and ``undefended`` keep the order of the config's attacks; ``config`` is the full
    :class:`~freqpure.evaluation.config.EvalConfig` as a dict (:meth:`eval_config` rebuilds it);
    ``protocol`` and ``sanity`` are the texts and checks of :mod:`freqpure.evaluation.runner`;
    ``resumed``: this run was continued from an earlier, interrupted invocation.
    """

    name: str
    defence: str
    seed: int
    n: int
    data: str
    clean: Accuracy
    robust: Accuracy
    per_attack: dict[str, Accuracy]
    config: dict[str, Any]
    timings: Timings
    noise_scheme: str
    versions: dict[str, str]
    undefended: dict[str, Accuracy] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    sanity: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    world_size: int = 1
    resumed: bool = False
    examples: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    # images per "device/precision" they were computed with ({} in results written before the field)
    environments: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str = "results.json") -> Results:
        d = require_keys(data, ("config", "clean", "robust", "per_attack", "n"), where)
        d = current_schema(d, upgrade_results_v0, where)
        d = require_keys(d, ("name", "defence", "seed", "timings", "noise_scheme"), where)
        return cls(
            name=str(d["name"]), defence=str(d["defence"]), seed=int(d["seed"]), n=int(d["n"]),
            data=str(d.get("data", "")),
            clean=Accuracy.from_dict(d["clean"], f"{where}: clean"),
            robust=Accuracy.from_dict(d["robust"], f"{where}: robust"),
            per_attack={str(k): Accuracy.from_dict(v, f"{where}: per_attack.{k}") for k, v in d["per_attack"].items()},
            config=dict(d["config"]), timings=Timings.from_dict(d["timings"], f"{where}: timings"),
            noise_scheme=str(d["noise_scheme"]),
            versions={str(k): str(v) for k, v in (d.get("versions") or {}).items()},
            undefended={str(k): Accuracy.from_dict(v, f"{where}: undefended.{k}")
                        for k, v in (d.get("undefended") or {}).items()},
            protocol=dict(d.get("protocol") or {}), sanity=dict(d.get("sanity") or {}),
            warnings=[str(w) for w in d.get("warnings") or []], world_size=int(d.get("world_size", 1)),
            resumed=bool(d.get("resumed", False)), examples=dict(d.get("examples") or {}),
            environments={str(k): int(v) for k, v in (d.get("environments") or {}).items()},
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("clean", "robust"):
            out[key] = getattr(self, key).to_dict()
        out["per_attack"] = {k: v.to_dict() for k, v in self.per_attack.items()}
        out["undefended"] = {k: v.to_dict() for k, v in self.undefended.items()}
        return {"schema_version": out.pop("schema_version"), **out}

    def eval_config(self):
        """The run's :class:`~freqpure.evaluation.config.EvalConfig` (defaults fill keys an older run lacks)."""
        from freqpure.config.io import from_dict
        from freqpure.evaluation.config import EvalConfig

        return from_dict(EvalConfig, self.config)

    def attacks(self) -> list[tuple[str, dict[str, Any]]]:
        """``(label, attack config dict)`` in the run's order (``per_attack`` keeps the config's order)."""
        return list(zip(self.per_attack, self.config["attacks"], strict=True))


def upgrade_results_v0(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-0 ``results.json`` (the dict written before the schema) → schema 1.

    Adds ``schema_version`` and ``noise_scheme`` (:data:`LEGACY_NOISE_SCHEME`, the only scheme before the
    field existed) and moves ``timings.resumed`` to the top level.
    """
    out = dict(data)
    timings = dict(out.get("timings") or {})
    resumed = bool(timings.pop("resumed", False))
    out.update(schema_version=SCHEMA_VERSION, noise_scheme=out.get("noise_scheme", LEGACY_NOISE_SCHEME),
               timings=timings, resumed=resumed)
    out.setdefault("seed", (out.get("config") or {}).get("seed", 0))
    out.setdefault("name", (out.get("config") or {}).get("name", "eval"))
    out.setdefault("defence", ((out.get("config") or {}).get("purifier") or {}).get("method", "?"))
    return out
