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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from freqpure.errors import RunFolderError

__all__ = ["LOCK_NAME", "RunLock", "locked_folder"]

LOCK_NAME = ".freqpure.lock"


class RunLock:
    """``RunLock(folder).acquire()`` … ``release()`` (or ``with RunLock(folder):``)."""

    def __init__(self, folder: str | Path, *, name: str = LOCK_NAME, subject: str | None = None) -> None:
        """``name``: the lock file in ``folder``; ``subject``: what is locked, for the messages (the folder)."""
        self.folder = Path(folder)
        self.path = self.folder / name
        self.subject = subject or f"run folder {self.folder}"
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
            raise RunFolderError(f"{self.subject} is in use by another freqpure run ({holder}); wait for "
                                 "it to finish or choose another --out") from None
        except BaseException:
            os.close(fd)
            raise
        if not self._still_named(fd):  # a finished run removed the file between our open and our lock
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise RunFolderError(f"{self.subject} was in use by another freqpure run that has just "
                                 "finished; choose another --out (or try again)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def _still_named(self, fd: int) -> bool:
        """Whether the open lock file is still the one at :attr:`path` (not removed or replaced)."""
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            return False

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


@contextmanager
def locked_folder(folder: str | Path) -> Iterator[RunLock]:
    """Hold :class:`RunLock` on ``folder`` while a command writes into it (a second command is refused).

    When the command fails and the folder did not exist before and holds nothing but the lock file, the
    folder is removed again: a failed command leaves nothing behind.
    """
    folder = Path(folder)
    created = not folder.exists()
    lock = RunLock(folder).acquire()
    try:
        yield lock
    except BaseException:
        if created and {p.name for p in folder.iterdir()} <= {LOCK_NAME}:
            lock.path.unlink(missing_ok=True)  # while held: a run that opened it meanwhile is refused
            lock.release()
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    finally:
        lock.release()
