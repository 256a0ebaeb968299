"""Crash-safe per-sample records: ``samples.jsonl``, one JSON object per line, appended batch by batch.

Every finished batch is written with one ``write`` under an exclusive file lock, then flushed and
fsync'ed, so a run killed at any moment loses at most the batch in flight. On resume a torn last
line (a kill in the middle of a write) is cut off before anything is appended; complete lines are
never removed (a garbled one is skipped when reading), and records are
deduplicated by sample index (the first record of an index wins; re-runs are deterministic, so any
duplicate is identical anyway).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["SampleStore"]


class SampleStore:
    """Append-only JSON-lines store of per-sample records keyed by ``record["index"]``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

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
        with open(self.path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(rec, dict) and "index" in rec:
                    records.setdefault(int(rec["index"]), rec)
        return records

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records as one write, under an exclusive lock, then flush and fsync."""
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
