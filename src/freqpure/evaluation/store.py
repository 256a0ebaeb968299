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

__all__ = ["FINGERPRINT_KEY", "SampleStore", "config_fingerprint"]

FINGERPRINT_KEY = "config_sha256"


def config_fingerprint(config: dict[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of a config dict in canonical JSON (sorted keys)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class SampleStore:
    """Append-only JSON-lines store of per-sample records keyed by ``record["index"]``."""

    def __init__(self, path: str | Path, fingerprint: str | None = None) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint

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
                mark = rec.get(FINGERPRINT_KEY)
                if self.fingerprint is not None and mark is not None and mark != self.fingerprint:
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

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records as one write, under an exclusive lock, then flush and fsync."""
        if self.fingerprint is not None:
            records = [{**r, FINGERPRINT_KEY: self.fingerprint} for r in records]
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
