"""The schema of evaluation records and its strict check on read: versions, required keys, and the one
validator of a ``samples.jsonl`` record (evaluate's finalize, ``freqpure table``, ``freqpure report``).

Schema versions (``schema_version``):

* **0** — the ad-hoc dicts written before the schema existed (no ``schema_version`` key, no
  ``noise_scheme``). :func:`~freqpure.evaluation.records.upgrade_results_v0` / :func:`upgrade_sample_v0`
  read them: their noise was made by the scheme :data:`LEGACY_NOISE_SCHEME` and ``resumed`` moves from
  ``timings`` to the top level.
* **1** — the records of :mod:`freqpure.evaluation.records`: ``schema_version``, ``noise_scheme``
  (:data:`freqpure.samplers.NOISE_SCHEME` at the time of the run), ``seed``, ``versions`` (package versions),
  the full ``config``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from freqpure.errors import UsageError

__all__ = ["SCHEMA_VERSION", "LEGACY_NOISE_SCHEME", "require_keys", "current_schema", "upgrade_sample_v0",
           "validate_sample"]

SCHEMA_VERSION = 1
# The seed-derivation scheme of every run written before results carried ``noise_scheme`` (schema 0).
LEGACY_NOISE_SCHEME = "linear-v1"


def require_keys(data: Any, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    """``data`` if it is a dict holding every key of ``keys``, else a :class:`UsageError` naming ``where``."""
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise UsageError(f"{where}: missing key(s) {missing}")
    return data


def current_schema(d: dict[str, Any], upgrade_v0: Any, where: str) -> dict[str, Any]:
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
        current_schema(data, upgrade_sample_v0, where)  # a non-integer or newer schema_version first
    try:
        _check_sample(data, require_fingerprint=require_fingerprint, attack_labels=labels, undefended_keys=keys)
    except _Bad as err:
        raise UsageError(f"{where}: {err}; this record was edited or damaged: restore the file or re-run the "
                         "evaluation into a new --out") from None
    return data
