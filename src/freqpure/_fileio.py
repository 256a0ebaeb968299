"""Atomic file writes: write to a temporary name in the same folder, then rename over the target.

The one writer of the package: :func:`atomic_path` for writers that need a path (torch, numpy, safetensors),
:func:`write_text_atomic` and :func:`write_json_atomic` for text and JSON. Every file a run, a report, a cache
or an export writes goes through :func:`atomic_path`. (The CIFAR-10 download renames a whole unpacked folder
into place, which a file writer cannot do; see :func:`freqpure.data.download_cifar10`.)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from freqpure.errors import OutputExistsError

__all__ = ["RUN_FILE_NAMES", "atomic_path", "check_output_file", "check_writable_output", "nonfinite_to_null",
           "write_json_atomic", "write_text_atomic"]

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


def write_text_atomic(path: str | Path, text: str, *, encoding: str = "utf-8", fsync: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`); ``fsync``: flush to disk before the rename."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding=encoding) as f:
        f.write(text)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return path


def nonfinite_to_null(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±Inf) in its dicts, lists and tuples replaced by ``None``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: nonfinite_to_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [nonfinite_to_null(v) for v in obj]
    return obj


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 2, sort_keys: bool = False,
                      finite: bool = True, default: Callable[[Any], Any] | None = None, newline: bool = True,
                      fsync: bool = False) -> Path:
    """Write ``data`` as JSON to ``path`` atomically; returns ``path``.

    ``finite``: NaN/Inf become ``null`` (strict JSON); ``default``: as in :func:`json.dumps` (e.g. ``str``);
    ``newline``: end the file with one newline.
    """
    text = json.dumps(nonfinite_to_null(data) if finite else data, indent=indent, sort_keys=sort_keys, default=default)
    return write_text_atomic(path, text + ("\n" if newline else ""), fsync=fsync)


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


# Files that make up a run folder of evaluate, study, demo, analyze, purify or train: an output path given to
# another command (``table --out``, ``report -o``) may never be one of them, even with --force.
RUN_FILE_NAMES = frozenset({
    "config.yaml", "samples.jsonl", "results.json", "results.md", "examples.npz", ".freqpure.lock", "summary.json",
    "vote.jsonl", "timing.json", "study.yaml", "study.md", "grid.png", "manifest.json", "analysis.json",
    "metrics.jsonl", "checkpoint.pt", "config.json",
})


def _own_file_of(target: Path, folder: Path) -> bool:
    """Whether ``target`` (resolved) is one of run folder ``folder``'s own files (also in its sub-runs)."""
    root = folder.resolve()
    if root not in target.parents:
        return False
    return target.name in RUN_FILE_NAMES or "parts" in target.relative_to(root).parts[:-1]


def check_output_file(path: str | Path, what: str, *, force: bool = False,
                      inputs: Iterable[str | Path] = (), replaceable: Callable[[Path], bool] | None = None) -> Path:
    """Check, before any work, that the output file ``path`` may be written; return it.

    :func:`check_writable_output`, then: never one of the run files of the ``inputs`` folders (a file input
    stands for its folder), even with ``force``; an existing file only with ``force`` or when
    ``replaceable(path)`` says it is this command's own earlier output.
    """
    path = check_writable_output(path, what)
    target = path.resolve()
    for item in inputs:
        item = Path(item)
        folder = item if item.is_dir() or not item.exists() else item.parent  # a run folder yet to be made too
        if target == item.resolve() or _own_file_of(target, folder):
            raise OutputExistsError(f"{what} {path} is one of the files of run {folder}; writing it would destroy "
                                    "the run: give a path outside the run's files")
    if target.exists() and not force and not (replaceable is not None and replaceable(target)):
        raise OutputExistsError(f"{what} {path} already exists and was not written by this command; pass --force "
                                "to replace it")
    return path
