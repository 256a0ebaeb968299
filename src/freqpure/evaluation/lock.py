"""An exclusive lock on a run folder, held for the lifetime of a run.

``fcntl.flock`` on ``<run>/.freqpure.lock``: the kernel releases it when the holder exits or dies
(SIGKILL included), so a lock left by a dead process never blocks a new run, and a live holder is
refused with a :class:`~freqpure.errors.RunFolderError` naming its PID. The lock file itself is never
deleted (deleting it would let two processes lock two different files of the same name).
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from freqpure.errors import RunFolderError

__all__ = ["LOCK_NAME", "RunLock"]

LOCK_NAME = ".freqpure.lock"


class RunLock:
    """``RunLock(folder).acquire()`` … ``release()`` (or ``with RunLock(folder):``)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self.created_folder = False  # set by the caller when this run made the folder

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock (creating the folder); raise :class:`RunFolderError` if another process holds it."""
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "an unknown process"
            os.close(fd)
            raise RunFolderError(f"run folder {self.folder} is in use by another freqpure run ({holder}); wait for "
                                 "it to finish or choose another --out") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (also done by the kernel when the process ends)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lock must not outlive its object
        try:
            self.release()
        except OSError:
            pass
