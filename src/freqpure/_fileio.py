"""Atomic file writes: write to a temporary name in the same folder, then rename over the target."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "check_writable_output"]

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on error remove it.

    A crash at any moment leaves either the old file or the complete new one, never half a file.
    The file gets the usual permissions (``0666 & ~umask``), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        # after the write: some writers (safetensors' save_file) replace the file with a 0600 one
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable_output(path: str | Path, what: str = "output") -> Path:
    """Check, before any work is done, that a file can be written at ``path``; return it.

    Refuses a folder (or ``/dev/null``-like non-files) at ``path`` and a location where no file can be
    created (read-only, permission denied, a file where a folder should be). Creates nothing: a probe
    file is made and removed in the nearest existing folder.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_file():
        raise IsADirectoryError(21, f"{what} must be a file path, and this is a folder or a device", str(path))
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(20, f"{what} cannot be created: {folder} is a file, not a folder", str(path))
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".freqpure-write-test-")
    except OSError as err:
        raise OSError(err.errno, f"{what} is not writable ({err.strerror})", str(path)) from None
    os.close(fd)
    os.unlink(probe)
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(13, f"{what} is not writable", str(path))
    return path
