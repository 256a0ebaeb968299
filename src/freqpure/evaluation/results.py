"""Typed, versioned results of an evaluation: :class:`Results` (``results.json``) and :class:`SampleRecord`
(one line of ``samples.jsonl``), with the math that summarises them.

Every writer builds these dataclasses and every reader (``freqpure table``, ``freqpure report``, the demo,
``benchmarks/paired_runs.py``) goes through :func:`read_results` / :func:`read_samples`, never through
string keys of raw dicts.

Schema versions (``schema_version``):

* **0** — the ad-hoc dicts written before the schema existed (no ``schema_version`` key, no
  ``noise_scheme``). :func:`upgrade_results_v0` / :func:`upgrade_sample_v0` read them: their noise was made
  by the scheme :data:`LEGACY_NOISE_SCHEME` and ``resumed`` moves from ``timings`` to the top level.
* **1** — this module: ``schema_version``, ``noise_scheme`` (:data:`freqpure.samplers.NOISE_SCHEME`
  at the time of the run), ``seed``, ``versions`` (package versions), the full ``config``.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from freqpure._fileio import atomic_path, nonfinite_to_null, write_json_atomic
from freqpure.errors import FreqpureError, NotFoundError, UsageError

__all__ = ["wilson_interval", "accuracy", "package_versions", "render_markdown", "assemble_examples",
           "EXAMPLES_MAX", "SCHEMA_VERSION", "LEGACY_NOISE_SCHEME", "Accuracy", "AttackOutcome", "SampleRecord",
           "Timings", "Results", "read_results", "read_samples", "write_results", "upgrade_results_v0",
           "upgrade_sample_v0", "validate_sample", "read_sample_records", "check_results", "read_run"]

EXAMPLES_MAX = 16  # examples.npz holds the first (by subset position) <= 16 samples
SCHEMA_VERSION = 1
# The seed-derivation scheme of every run written before results carried ``noise_scheme`` (schema 0).
LEGACY_NOISE_SCHEME = "linear-v1"


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


# ---------------------------------------------------------------------------------------------
# Dataclasses
# ---------------------------------------------------------------------------------------------
def _require_keys(data: Any, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise UsageError(f"{where}: missing key(s) {missing}")
    return data


def _current_schema(d: dict[str, Any], upgrade_v0: Any, where: str) -> dict[str, Any]:
    """``d`` in schema :data:`SCHEMA_VERSION`: a schema-0 dict goes through ``upgrade_v0``; a newer one is refused."""
    version = d.get("schema_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise UsageError(f"{where}: schema_version must be a whole number such as {SCHEMA_VERSION}, got "
                         f"{type(version).__name__} {version!r}: the file was edited or not written by freqpure")
    if version == 0:
        return upgrade_v0(d)
    if version > SCHEMA_VERSION:
        raise UsageError(f"{where}: schema_version {version} is newer than this freqpure reads "
                         f"({SCHEMA_VERSION}); upgrade freqpure")
    if version != SCHEMA_VERSION:
        raise UsageError(f"{where}: schema_version {version} was never written by freqpure (it writes 0 to "
                         f"{SCHEMA_VERSION}): the file was edited or not written by freqpure")
    return d


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


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
        d = _require_keys(data, ("correct", "n"), where)
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
        lo, hi = self.ci95
        return f"{100 * self.accuracy:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


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
        d = _require_keys(data, ("pred", "correct", "linf", "l2"), where)
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

    @classmethod
    def from_dict(cls, data: Any, where: str = "sample") -> SampleRecord:
        validate_sample(data, where)  # strict types and derived fields (see validate_sample)
        d = _require_keys(data, ("index", "label", "clean_pred", "clean_correct", "attacks", "robust"), where)
        d = _current_schema(d, upgrade_sample_v0, where)
        attacks = {str(k): AttackOutcome.from_dict(v, f"{where}.attacks.{k}") for k, v in d["attacks"].items()}
        return cls(int(d["index"]), int(d.get("position", -1)), int(d.get("batch", -1)), int(d["label"]),
                   int(d["clean_pred"]), bool(d["clean_correct"]), attacks, bool(d["robust"]),
                   {str(k): bool(v) for k, v in (d.get("undefended") or {}).items()},
                   {str(k): float(v) for k, v in (d.get("seconds") or {}).items()},
                   device=None if d.get("device") is None else str(d["device"]),
                   precision=None if d.get("precision") is None else str(d["precision"]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def outcomes(self) -> dict[str, bool]:
        """Correctness per metric: ``clean``, each attack label, and ``worst case`` (= ``robust``)."""
        out = {"clean": self.clean_correct}
        out.update({label: a.correct for label, a in self.attacks.items()})
        out["worst case"] = self.robust
        return out


def upgrade_sample_v0(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-0 ``samples.jsonl`` record → schema 1 (the fields were already the same; the version is added)."""
    return {**data, "schema_version": SCHEMA_VERSION}


# ---------------------------------------------------------------------------------------------
# Validating samples.jsonl records (one validator: evaluate's finalize, ``freqpure table``, ``freqpure report``)
# ---------------------------------------------------------------------------------------------
_SAMPLE_REQUIRED = ("index", "label", "clean_pred", "clean_correct", "attacks", "robust")
# keys the writers have written, besides the required ones: position/batch/undefended/seconds (schema 0 on),
# schema_version/noise_scheme/config_sha256 (schema 1), numbers_sha256/device/precision (runs that name
# where and how precisely each batch was computed)
_SAMPLE_OPTIONAL = ("schema_version", "position", "batch", "undefended", "seconds", "noise_scheme",
                    "config_sha256", "numbers_sha256", "device", "precision")
_SAMPLE_TEXT = ("noise_scheme", "config_sha256", "numbers_sha256", "device", "precision")
_ATTACK_REQUIRED = ("pred", "correct", "linf", "l2")
_ATTACK_OPTIONAL = ("loss", "grad_norm", "seconds")
_SECONDS_KEYS = ("attack", "judge", "sanity", "total")


class _Bad(Exception):
    """One problem in one record (the caller adds the file and line)."""


def _kind(value: Any) -> str:
    return f"the string {value!r}" if isinstance(value, str) else f"{type(value).__name__} {value!r}"


def _want_int(value: Any, key: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _Bad(f"{key} must be a whole number >= {minimum}, got {_kind(value)}")
    return value


def _want_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"{key} must be JSON true or false, got {_kind(value)}")
    return value


def _want_number(value: Any, key: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or (
            optional is False and value < 0):
        raise _Bad(f"{key} must be a finite {'' if optional else 'non-negative '}number, got {_kind(value)}")
    return float(value)


def _want_dict(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"{key} must be a JSON object, got {_kind(value)}")
    return value


def _check_keys(d: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...], what: str) -> None:
    missing = [k for k in required if k not in d]
    if missing:
        raise _Bad(f"{what} lacks {', '.join(missing)}")
    unknown = sorted(set(d) - set(required) - set(optional))
    if unknown:
        raise _Bad(f"{what} has unknown key(s) {', '.join(map(repr, unknown))}")


def _check_attack(label: str, a: Any, truth: int) -> bool:
    where = f"attacks[{label!r}]"
    a = _want_dict(a, where)
    _check_keys(a, _ATTACK_REQUIRED, _ATTACK_OPTIONAL, where)
    pred = _want_int(a["pred"], f"{where}.pred")
    correct = _want_bool(a["correct"], f"{where}.correct")
    if correct != (pred == truth):
        raise _Bad(f"{where}.correct is {str(correct).lower()} but its pred {pred} "
                   f"{'equals' if pred == truth else 'differs from'} the label {truth}")
    _want_number(a["linf"], f"{where}.linf")
    _want_number(a["l2"], f"{where}.l2")
    for key in ("loss", "grad_norm"):
        _want_number(a.get(key), f"{where}.{key}", optional=True)
    if a.get("seconds") is not None:
        _want_number(a["seconds"], f"{where}.seconds")
    return correct


def _check_sample(d: Any, *, require_fingerprint: bool, attack_labels: tuple[str, ...] | None,
                  undefended_keys: tuple[str, ...] | None) -> None:
    d = _want_dict(d, "the record")
    _check_keys(d, _SAMPLE_REQUIRED, _SAMPLE_OPTIONAL, "the record")
    for key in ("index", "position", "batch"):
        if key in d:
            _want_int(d[key], key)
    label = _want_int(d["label"], "label")
    clean_pred = _want_int(d["clean_pred"], "clean_pred")
    clean = _want_bool(d["clean_correct"], "clean_correct")
    if clean != (clean_pred == label):
        raise _Bad(f"clean_correct is {str(clean).lower()} but clean_pred {clean_pred} "
                   f"{'equals' if clean_pred == label else 'differs from'} the label {label}")
    attacks = _want_dict(d["attacks"], "attacks")
    if not attacks:
        raise _Bad("attacks is empty (every evaluation record holds at least one attack)")
    if attack_labels is not None and set(attacks) != set(attack_labels):
        raise _Bad(f"attacks are {sorted(attacks)} but the run's config has {sorted(attack_labels)}")
    survived = [_check_attack(str(k), v, label) for k, v in attacks.items()]
    robust = _want_bool(d["robust"], "robust")
    if robust != (clean and all(survived)):
        raise _Bad(f"robust is {str(robust).lower()} but the record is {'correct' if clean else 'wrong'} on the "
                   f"clean image and survives {sum(survived)} of {len(survived)} attack(s)")
    undefended = _want_dict(d.get("undefended", {}), "undefended")
    for key, value in undefended.items():
        _want_bool(value, f"undefended[{key!r}]")
    missing = [k for k in undefended_keys or () if k not in undefended]
    if missing:
        raise _Bad(f"undefended lacks the sanity check(s) {', '.join(missing)}")
    seconds = _want_dict(d.get("seconds", {}), "seconds")
    for key, value in seconds.items():
        _want_number(value, f"seconds[{key!r}]")
    if "seconds" in d and set(seconds) != set(_SECONDS_KEYS):
        raise _Bad(f"seconds must hold {', '.join(_SECONDS_KEYS)}, got {sorted(seconds)}")
    for key in _SAMPLE_TEXT:
        if key in ("device", "precision") and d.get(key, "") is None:
            continue  # SampleRecord.to_dict of a record that did not name them
        if key in d and not (isinstance(d[key], str) and d[key]):
            raise _Bad(f"{key} must be a non-empty string, got {_kind(d[key])}")
    if (require_fingerprint or "schema_version" in d) and "config_sha256" not in d:
        raise _Bad("config_sha256 is missing (every record since schema 1 names the config it was made with)")


def validate_sample(data: Any, where: str = "sample", *, require_fingerprint: bool = False,
                    attack_labels: Iterable[str] | None = None,
                    undefended_keys: Iterable[str] | None = None) -> dict[str, Any]:
    """Check one ``samples.jsonl`` record strictly; return it (a dict) or raise :class:`UsageError` naming ``where``.

    Types are JSON's own (a bool must be ``true``/``false``, never ``"false"``; counts and predictions
    whole numbers >= 0; sizes and times finite); unknown keys are refused; the derived fields must agree
    with the predictions and the label (``clean_correct``, each attack's ``correct``, ``robust`` =
    clean and every attack correct). ``config_sha256`` is required from schema 1 on (``require_fingerprint``:
    always). ``attack_labels`` / ``undefended_keys``: the attacks and sanity checks the run's config makes.
    """
    labels = None if attack_labels is None else tuple(attack_labels)
    keys = None if undefended_keys is None else tuple(undefended_keys)
    if isinstance(data, dict):
        _current_schema(data, upgrade_sample_v0, where)  # a non-integer or newer schema_version first
    try:
        _check_sample(data, require_fingerprint=require_fingerprint, attack_labels=labels, undefended_keys=keys)
    except _Bad as err:
        raise UsageError(f"{where}: {err}; this record was edited or damaged: restore the file or re-run the "
                         "evaluation into a new --out") from None
    return data


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
        d = _require_keys(data, ("sample_seconds_total", "seconds_per_sample"), where)

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
        d = _require_keys(data, ("config", "clean", "robust", "per_attack", "n"), where)
        d = _current_schema(d, upgrade_results_v0, where)
        d = _require_keys(d, ("name", "defence", "seed", "timings", "noise_scheme"), where)
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
        from freqpure.config import from_dict
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


# ---------------------------------------------------------------------------------------------
# Reading and writing run directories
# ---------------------------------------------------------------------------------------------
def read_results(run_dir: str | Path) -> Results:
    """The :class:`Results` of ``run_dir/results.json`` (any schema version); a clear error when missing."""
    path = Path(run_dir)
    path = path / "results.json" if path.is_dir() or path.suffix != ".json" else path
    if not path.is_file():
        hint = (" (the run is unfinished: resume it with --resume)"
                if (path.parent / "samples.jsonl").exists() else "")
        raise NotFoundError(f"{path} does not exist{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not valid JSON ({err}); re-run the evaluation") from None
    if isinstance(data, dict) and not all(k in data for k in ("config", "clean", "robust", "per_attack", "n")):
        missing = [k for k in ("config", "clean", "robust", "per_attack", "n") if k not in data]
        raise UsageError(f"{path} lacks {missing}: not a freqpure evaluate results file")
    try:
        results = Results.from_dict(data, str(path))
    except FreqpureError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as err:
        raise UsageError(f"{path}: not a valid results file ({type(err).__name__}: {err}); the file was edited or "
                         "damaged: re-run the evaluation") from None
    return check_results(results, data, str(path))


# config keys every results.json has held since schema 0 and that tables and reports show
_SHOWN_CONFIG = {"purifier": ("method", "rounds", "sampler", "amp_radius", "phase_radius", "delta"),
                 "defence": ("vote", "ensemble"), "classifier": ("name",), "data": ("n",)}
_SHOWN_ATTACK = ("name", "norm", "eps", "steps", "eot", "gradient")


def _normal_config(config: Any, where: str) -> dict[str, Any]:
    """The run's config as a full dict (defaults fill keys an older run lacks); a clear error if it is not one."""
    from freqpure.config import from_dict, to_dict
    from freqpure.evaluation.config import EvalConfig

    if not isinstance(config, dict):
        raise UsageError(f"{where}: config must be a JSON object, got {type(config).__name__}")
    attacks = config.get("attacks")
    sections = {**{k: config.get(k) for k in _SHOWN_CONFIG},
                **{f"attacks.{i}": a for i, a in enumerate(attacks if isinstance(attacks, list) else [None])}}
    for name, section in sections.items():
        keys = _SHOWN_CONFIG.get(name, _SHOWN_ATTACK)
        lacking = [k for k in keys if not isinstance(section, dict) or k not in section]
        if lacking:  # shown in tables and reports: a default would silently describe another run
            raise UsageError(f"{where}: config lacks {', '.join(f'{name}.{k}' for k in lacking)}; the file was "
                             "edited or damaged: re-run the evaluation")
    purifier = config.get("purifier")
    raw = {**config, "purifier": {"precision": "fp32", **purifier}} if isinstance(purifier, dict) else config
    try:
        return to_dict(from_dict(EvalConfig, raw))
    except (ValueError, TypeError, KeyError) as err:  # UsageError is a ValueError
        raise UsageError(f"{where}: its config is not a valid evaluation config ({err})") from None


def check_results(results: Results, data: dict[str, Any], where: str) -> Results:
    """Refuse a ``results.json`` whose numbers cannot all be true; return it with its config completed.

    ``data``: the file's JSON (its types are checked: ``n`` and ``seed`` whole numbers, ``name`` text).
    Every accuracy must count the same ``n`` images, the worst case cannot exceed the clean accuracy or
    any attack's, there is one accuracy per attack of the config, and the config must be a valid one.
    """
    for key, kind in (("n", int), ("seed", int), ("name", str), ("defence", str), ("noise_scheme", str)):
        value = data.get(key, getattr(results, key))
        if isinstance(value, bool) or not isinstance(value, kind):
            raise UsageError(f"{where}: {key} must be {'a whole number' if kind is int else 'text'}, got {value!r}")
    if results.n < 1:
        raise UsageError(f"{where}: n = {results.n}: a finished run has evaluated at least one image")
    if not results.per_attack:
        raise UsageError(f"{where}: per_attack is empty (every evaluation attacks); re-run the evaluation")
    entries = {"clean": results.clean, "robust": results.robust,
               **{f"per_attack.{k}": v for k, v in results.per_attack.items()},
               **{f"undefended.{k}": v for k, v in results.undefended.items()}}
    for name, acc in entries.items():
        if acc.n != results.n:
            raise UsageError(f"{where}: {name} counts {acc.n} images but n = {results.n}; the file was edited or "
                             "damaged: re-run the evaluation")
    caps = {"clean": results.clean.correct, **{k: v.correct for k, v in results.per_attack.items()}}
    for name, cap in caps.items():
        if results.robust.correct > cap:
            raise UsageError(f"{where}: the worst case ({results.robust.correct} correct) exceeds {name} ({cap} "
                             "correct), which cannot be: the file was edited or damaged; re-run the evaluation")
    config = _normal_config(results.config, where)
    if len(config["attacks"]) != len(results.per_attack):
        raise UsageError(f"{where}: per_attack has {len(results.per_attack)} entries but the config "
                         f"{len(config['attacks'])} attack(s); the file was edited or damaged")
    return replace(results, config=config)


def read_run(run_dir: str | Path) -> tuple[Results, dict[int, SampleRecord] | None]:
    """A finished run's :class:`Results` and, when ``samples.jsonl`` is there, its validated records.

    The records must add up to ``results.json``: as many images, and the same number correct on the clean
    images, under each attack, in the worst case and in each undefended check — else the run is refused
    (a hand-edited or mismatched ``results.json`` never reaches a table or report).
    """
    folder = Path(run_dir)
    folder = folder.parent if folder.suffix == ".json" and not folder.is_dir() else folder
    results = read_results(folder)
    path = folder / "samples.jsonl"
    if not path.is_file():
        return results, None
    records = read_sample_records(path, attack_labels=results.per_attack,
                                  undefended_keys=results.undefended)
    recs = list(records.values())
    counts = {"n": (results.n, len(recs)), "clean": (results.clean.correct, sum(r.clean_correct for r in recs)),
              "worst case": (results.robust.correct, sum(r.robust for r in recs))}
    counts.update({k: (v.correct, sum(r.attacks[k].correct for r in recs)) for k, v in results.per_attack.items()})
    counts.update({f"undefended {k}": (v.correct, sum(r.undefended[k] for r in recs))
                   for k, v in results.undefended.items()})
    for name, (claimed, recorded) in counts.items():
        if claimed != recorded:
            raise UsageError(f"{folder / 'results.json'} says {name} = {claimed} but its samples.jsonl records give "
                             f"{recorded}: one of them was edited or they belong to different runs; re-run "
                             "the evaluation")
    return results, records


def read_samples(run_dir: str | Path) -> dict[int, SampleRecord]:
    """``{test-image index: SampleRecord}`` of ``run_dir/samples.jsonl`` (finished or still running).

    Read by :func:`read_sample_records` (first record of an index wins; a torn last line is skipped; every
    other line must be a valid record); any schema version.
    """
    path = Path(run_dir) / "samples.jsonl"
    if not path.is_file():
        raise NotFoundError(f"{path} does not exist: not an evaluation run directory")
    return read_sample_records(path)


def write_results(run_dir: str | Path, results: Results) -> Path:
    """Write ``results.json`` atomically; returns its path."""
    path = Path(run_dir) / "results.json"
    write_json_atomic(path, results.to_dict(), fsync=True)
    return path


def package_versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages that change numbers."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("freqpure", "torch", "numpy", "torchsde", "pyautoattack"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _pct(entry: Accuracy) -> str:
    lo, hi = entry.ci95
    return f"{100 * entry.accuracy:.1f}% | [{100 * lo:.1f}, {100 * hi:.1f}] | {entry.correct}/{entry.n}"


def render_markdown(results: Results) -> str:
    """A markdown summary: the accuracy table, the protocol and the sanity checks."""
    cfg = results.config
    lines = [
        f"# {results.name}",
        "",
        f"Defence: `{results.defence}` · classifier `{cfg['classifier']['name']}` · "
        f"n = {results.n} · seed {results.seed} · noise scheme `{results.noise_scheme}`",
        "",
        "| metric | accuracy | 95% CI (Wilson) | correct/n |",
        "|---|---|---|---|",
        f"| clean (standard) | {_pct(results.clean)} |",
        f"| **robust (worst case over attacks)** | {_pct(results.robust)} |",
    ]
    for label, entry in results.per_attack.items():
        lines.append(f"| under `{label}` | {_pct(entry)} |")
    for label, entry in results.undefended.items():
        lines.append(f"| undefended classifier, PGD {label} (sanity) | {_pct(entry)} |")
    lines += ["", "## Protocol", ""]
    for key, value in results.protocol.items():
        if isinstance(value, dict):
            lines.append(f"- **{key}**:")
            lines += [f"  - `{k}`: {v}" for k, v in value.items()]
        else:
            lines.append(f"- **{key}**: {value}")
    if results.sanity:
        lines += ["", "## Sanity checks", ""]
        for key, value in results.sanity.items():
            lines.append(f"- **{key}**: {json.dumps(nonfinite_to_null(value))}")
    if results.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in results.warnings]
    t = results.timings
    lines += ["", f"Time: {t.sample_seconds_total:.1f} s of batch work "
                  f"({t.seconds_per_sample:.2f} s/sample), {results.world_size} process(es)."]
    return "\n".join(lines) + "\n"


def assemble_examples(parts_dir: Path, out_path: Path, class_names: list[str], limit: int = EXAMPLES_MAX) -> int:
    """Concatenate per-batch example parts (``examples-b*.npz``) into ``examples.npz`` in subset order.

    Keys: ``clean``, ``adversarial``, ``purified`` (float32 ``[N, C, H, W]`` in [0, 1]), ``labels``,
    ``pred_clean`` (the defence on the clean image), ``pred_adversarial`` (the defence on the adversarial
    image: the verdict that counts), ``pred_purified`` (the bare classifier on the one purification stored in
    ``purified``) (int64 ``[N]``), ``class_names`` (str), ``positions``.
    Returns N.
    """
    parts = sorted(parts_dir.glob("examples-b*.npz"))
    if not parts:
        return 0
    loaded = [dict(np.load(p)) for p in parts]
    common = [k for k in loaded[0] if all(k in d for d in loaded)]  # parts of an older, resumed run may lack some
    merged = {k: np.concatenate([d[k] for d in loaded]) for k in common}
    order = np.argsort(merged["positions"], kind="stable")[:limit]
    out = {k: v[order] for k, v in merged.items()}
    for key in ("clean", "adversarial", "purified"):
        out[key] = out[key].astype(np.float32)
    for key in ("labels", "pred_clean", "pred_adversarial", "pred_purified", "positions"):
        if key in out:  # pred_purified: absent in parts written before it existed
            out[key] = out[key].astype(np.int64)
    out["class_names"] = np.array(class_names, dtype=str)
    with atomic_path(out_path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **out)
    return len(order)
