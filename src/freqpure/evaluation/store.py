"""Crash-safe per-sample records: ``samples.jsonl``, one JSON object per line, appended batch by batch.

Every finished batch is written with one ``write`` under an exclusive file lock, then flushed and
fsync'ed, so a run killed at any moment loses at most the batch in flight. On resume a torn last
line (a kill in the middle of a write) is cut off before anything is appended; complete lines are
never removed (a garbled one is skipped when reading), and records are
deduplicated by sample index (the first record of an index wins; re-runs are deterministic, so any
duplicate is identical anyway).

With a ``fingerprint`` (a hash of the run's config, :func:`config_fingerprint`), every appended
record carries it as ``config_sha256`` and loading refuses a file holding records of another
configuration (records from before the field existed are accepted: their folder's config.yaml
was checked).

A run may continue on another device or precision (a GPU run finished on a CPU): those two settings
(:data:`ENVIRONMENT_KEYS`) do not change which numbers a record stands for, only their rounding. Every
record therefore also carries ``numbers_sha256`` (:func:`numbers_fingerprint`: the config without them)
and its own ``device`` and ``precision``; a store given ``numbers`` accepts any record with that mark.
Records written before the mark existed carry only ``config_sha256`` of the config they ran under:
``legacy`` names the fingerprints accepted for them (the run folder's config.yaml). ``legacy_numbers`` names
further ``numbers_sha256`` marks of the same numbers: those of the config as it was spelled before a value was
renamed (:func:`freqpure.config.spelled_before`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from freqpure.errors import RunFolderError

__all__ = ["FINGERPRINT_KEY", "NUMBERS_KEY", "ENVIRONMENT_KEYS", "SampleStore", "config_fingerprint",
           "numbers_fingerprint", "saved_environment", "without_environment"]

FINGERPRINT_KEY = "config_sha256"
NUMBERS_KEY = "numbers_sha256"
# Config keys (dotted paths) that choose where and at which float precision a run computes, not what it
# computes: a run may change them between invocations; each record names its own.
ENVIRONMENT_KEYS = ("device", "purifier.precision")


def config_fingerprint(config: dict[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of a config dict in canonical JSON (sorted keys)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def without_environment(config: dict[str, Any], keys: tuple[str, ...] = ENVIRONMENT_KEYS) -> dict[str, Any]:
    """A copy of a config dict without the environment ``keys`` (dotted paths; default :data:`ENVIRONMENT_KEYS`,
    an evaluation's device and purifier precision)."""
    out = json.loads(json.dumps(config, default=str))
    for dotted in keys:
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def saved_environment(config: dict[str, Any]) -> tuple[str, str]:
    """``(device type, precision)`` a config dict names: what a record without its own ran under."""
    device = str(config.get("device") or "cpu").split(":")[0]
    return device, str((config.get("purifier") or {}).get("precision") or "fp32")


def numbers_fingerprint(config: dict[str, Any], keys: tuple[str, ...] = ENVIRONMENT_KEYS) -> str:
    """:func:`config_fingerprint` of the config without its device and precision (what the numbers depend on;
    ``keys``: where they are, as for :func:`without_environment`)."""
    return config_fingerprint(without_environment(config, keys))


class SampleStore:
    """Append-only JSON-lines store of per-sample records keyed by ``record["index"]``.

    ``fingerprint``: stamped on appended records as ``config_sha256``; ``numbers``: stamped as
    ``numbers_sha256`` and, when given, the mark a record carrying it must match; ``legacy``: further
    ``config_sha256`` values accepted from records without ``numbers_sha256``; ``legacy_numbers``: further
    ``numbers_sha256`` values accepted (the same numbers under an older spelling of the config).
    """

    def __init__(self, path: str | Path, fingerprint: str | None = None, *, numbers: str | None = None,
                 legacy: frozenset[str] = frozenset(), legacy_numbers: frozenset[str] = frozenset()) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.numbers = numbers
        self.legacy = frozenset(legacy)
        self.legacy_numbers = frozenset(legacy_numbers)

    def _accepts(self, rec: dict[str, Any]) -> tuple[bool, str | None]:
        """Whether a record belongs to this store's configuration, and its foreign mark if not."""
        if self.numbers is not None and NUMBERS_KEY in rec:
            mark = rec[NUMBERS_KEY]
            ok = mark == self.numbers or mark in self.legacy_numbers
            return ok, None if ok else f"numbers {mark}"
        mark = rec.get(FINGERPRINT_KEY)
        if self.fingerprint is None or mark is None or mark == self.fingerprint or mark in self.legacy:
            return True, None
        return False, str(mark)

    def repair(self) -> int:
        """Cut a torn last line (bytes after the last newline) so the next append starts on a fresh line.

        Complete lines are never removed (one that does not parse is skipped by :meth:`load`).
        Returns the number of bytes removed.
        """
        if not self.path.exists():
            return 0
        with open(self.path, "r+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                data = f.read()
                keep = data.rfind(b"\n") + 1
                removed = len(data) - keep
                if removed:
                    f.truncate(keep)
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return removed

    def load(self) -> dict[int, dict[str, Any]]:
        """All complete records by sample index (first wins); a torn or garbled line is skipped."""
        records: dict[int, dict[str, Any]] = {}
        if not self.path.exists():
            return records
        foreign: dict[str, int] = {}
        with open(self.path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if not (isinstance(rec, dict) and isinstance(rec.get("index"), int)):
                    continue
                ok, mark = self._accepts(rec)
                if not ok:
                    foreign[str(mark)] = foreign.get(str(mark), 0) + 1
                    continue
                records.setdefault(int(rec["index"]), rec)
        if foreign:
            n = sum(foreign.values())
            raise RunFolderError(
                f"{self.path} holds {n} record(s) of another configuration (config fingerprint "
                f"{', '.join(sorted(foreign))}; this run is {self.fingerprint}); refusing to mix them — "
                "choose another --out"
            )
        return records

    def append_records(self, records: Iterable[Any]) -> None:
        """Append typed records, each serialised by its ``to_dict()`` (the one way a writer turns a
        :class:`~freqpure.evaluation.records.SampleRecord` or a sweep record into a line), as :meth:`append`."""
        self.append([r.to_dict() for r in records])

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records as one write, under an exclusive lock, then flush and fsync."""
        if self.fingerprint is not None:
            records = [{**r, FINGERPRINT_KEY: self.fingerprint} for r in records]
        if self.numbers is not None:
            records = [{**r, NUMBERS_KEY: self.numbers} for r in records]
        payload = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
        if not payload:
            return
        with open(self.path, "ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
