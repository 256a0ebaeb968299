"""CIFAR-10 on disk: where it is looked for, its three formats (a tar of class folders, the official python
batches read by an unpickler that admits numpy arrays only, class folders) and the official download.

The public loading API (:func:`freqpure.data.load_cifar10`, the evaluation subset) is :mod:`freqpure.data`,
which re-exports every public name here.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from freqpure._fileio import atomic_path
from freqpure.errors import NotFoundError, UsageError
from freqpure.imagefolder import IMAGE_EXTENSIONS, decode_image

__all__ = ["CIFAR10_CLASSES", "CIFAR10_URL", "CIFAR10_MD5", "SPLITS", "cifar10_search_paths", "find_cifar10_dir",
           "load_cifar10_tar", "load_cifar10_batches", "cached_split", "download_cifar10"]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
SPLITS = ("train", "test")
_REPO = Path(__file__).resolve().parents[2]  # <repo>/src/freqpure/cifar10.py -> <repo>
# In-memory cache of decoded splits: key (path, size, mtime_ns) -> (x, y). Arrays are read-only.
_CACHE: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}


def cifar10_search_paths(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders :func:`find_cifar10_dir` looks in, in order."""
    paths: list[Path] = []
    if data_dir is not None:
        paths.append(Path(data_dir).expanduser())
    env = os.environ.get("FREQPURE_DATA")
    if env:
        paths += [Path(env).expanduser(), Path(env).expanduser() / "cifar10"]
    # The working directory is never searched implicitly: data must come from a named place.
    paths += [
        _REPO / "data" / "cifar10",
        _REPO.parent / "shared" / "data" / "cifar10",
        Path.home() / ".cache" / "freqpure" / "cifar10",
    ]
    seen: set[Path] = set()
    unique = []
    for p in paths:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def _has_split(folder: Path, split: str) -> bool:
    return (folder / f"{split}.tar").is_file() or (folder / "cifar-10-batches-py").is_dir() or (folder / split).is_dir()


def find_cifar10_dir(data_dir: str | os.PathLike | None = None, split: str = "test") -> Path:
    """First folder of :func:`cifar10_search_paths` holding ``split`` in a supported format.

    An explicit ``data_dir`` that does not exist is an error (no silent fallback).
    """
    if data_dir is not None and Path(data_dir).expanduser().exists() and not Path(data_dir).expanduser().is_dir():
        raise UsageError(f"CIFAR-10 data folder {data_dir} is a file, not a folder; give the folder that holds the "
                         "data (test.tar / train.tar, cifar-10-batches-py or class folders)")
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise NotFoundError(f"CIFAR-10 data folder {data_dir} does not exist")
    env = os.environ.get("FREQPURE_DATA")
    if data_dir is None and env is not None:
        if not env.strip() or not Path(env).expanduser().is_dir():
            raise NotFoundError(f"FREQPURE_DATA={env!r} is not a folder; point it at the data folder or unset it")
    if data_dir is not None and Path(data_dir, "data_batch_1").is_file():
        return Path(data_dir).expanduser().parent  # pointed at cifar-10-batches-py itself
    candidates = cifar10_search_paths(data_dir)
    if data_dir is not None:
        candidates = candidates[:1]
    elif env is not None:
        candidates = candidates[:2]  # an explicit FREQPURE_DATA is the only place looked in
    for folder in candidates:
        if folder.is_dir() and _has_split(folder, split):
            return folder
    looked = "\n  ".join(str(p) for p in candidates)
    raise NotFoundError(
        f"CIFAR-10 ({split} split) not found. Looked for {split}.tar, cifar-10-batches-py/ or {split}/<class>/ "
        f"in:\n  {looked}\nSet FREQPURE_DATA or pass a data dir (--data-dir); "
        "`freqpure.data.download_cifar10(dir)` fetches the official archive when online."
    )


def _class_of(name: str, classes: Sequence[str], where: str) -> int:
    parts = Path(name).parts
    if len(parts) < 2:
        raise UsageError(f"{where}: member {name!r} is not inside a class folder")
    cls = parts[-2]
    try:
        return classes.index(cls)
    except ValueError:
        raise UsageError(
            f"{where}: member {name!r} has unknown class {cls!r}; expected one of {list(classes)}"
        ) from None


def _check_classes(labels: np.ndarray, classes: Sequence[str], where: str) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    missing = [c for c, k in zip(classes, counts) if k == 0]
    if missing:
        raise UsageError(f"{where}: no images for classes {missing}")


def cached_split(path: Path, loader: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        x, y = loader()
        x.setflags(write=False)
        y.setflags(write=False)
        _CACHE[key] = (x, y)
    return _CACHE[key]


def load_cifar10_tar(
    path: str | os.PathLike, classes: Sequence[str] = CIFAR10_CLASSES, image_size: int | None = 32, cache: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Read a tar of ``<class>/<name>.<ext>`` images (e.g. the shared ``test.tar``).

    Returns uint8 ``[N, H, W, 3]`` and int64 labels ``[N]`` in member order. Raises ``ValueError``
    naming the member for truncated archives, undecodable or wrongly sized images, unknown or
    missing classes.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"CIFAR-10 archive {path} does not exist")

    def load() -> tuple[np.ndarray, np.ndarray]:
        images: list[np.ndarray] = []
        labels: list[int] = []
        member = "<header>"
        try:
            with tarfile.open(path) as tar:
                for m in tar:
                    member = m.name
                    if not m.isfile() or not m.name.endswith(IMAGE_EXTENSIONS):
                        continue
                    where = f"{path}:{m.name}"
                    # closed here, not by the garbage collector: a Ctrl-C raised inside a finaliser's close()
                    # would be printed and ignored, and the run would go on
                    with tar.extractfile(m) as member_file:
                        data = member_file.read()
                    if len(data) != m.size:
                        raise UsageError(f"{where}: truncated member ({len(data)} of {m.size} bytes)")
                    labels.append(_class_of(m.name, classes, str(path)))
                    images.append(decode_image(data, where, image_size))
                end = tar.offset  # where the end-of-archive marker (zero blocks) must start
        except (tarfile.TarError, EOFError, OSError) as err:
            raise UsageError(f"{path}: corrupt or truncated tar archive near member {member!r} ({err})") from None
        with open(path, "rb") as f:  # tarfile stops silently at a truncated header: check the marker
            f.seek(end)
            marker = f.read(512)
        if len(marker) < 512 or any(marker):
            raise UsageError(f"{path}: truncated or corrupt tar archive after member {member!r}")
        if not images:
            raise UsageError(f"{path}: no images found in the archive")
        y = np.asarray(labels, dtype=np.int64)
        _check_classes(y, classes, str(path))
        return np.stack(images), y

    return cached_split(path, load) if cache else load()


class _UnsafePickle(pickle.UnpicklingError):
    """A batch file asked for a Python object outside the admitted types."""


# What the official CIFAR-10 python batches need: plain containers (built by pickle opcodes, no
# lookup) plus numpy's array reconstruction. Anything else — os.system, builtins.eval, any class —
# is refused before it can be called.
_ADMITTED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that admits only dict/list/str/bytes/int and numpy arrays of numbers."""

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) not in _ADMITTED:
            raise _UnsafePickle(f"it asks for {module}.{name}, which is not a number array, list, dict or string")
        return super().find_class(module, name)

    def persistent_load(self, pid):  # noqa: ANN001, ANN201
        raise _UnsafePickle("it uses persistent ids")


def load_cifar10_batches(folder: str | os.PathLike, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Read the official ``cifar-10-batches-py`` folder: uint8 ``[N, 32, 32, 3]``, int64 ``[N]``."""
    folder = Path(folder)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in names:
        file = folder / name
        if not file.is_file():
            raise NotFoundError(f"CIFAR-10 batch file {file} does not exist")
        try:
            with open(file, "rb") as f:
                batch = _BatchUnpickler(f, encoding="bytes").load()
            if not isinstance(batch, dict):
                raise ValueError(f"top level is {type(batch).__name__}, expected dict")
            data = np.asarray(batch[b"data"])
            labels = np.asarray(batch[b"labels"])
            if data.dtype != np.uint8 or labels.dtype.kind not in "iu":
                raise ValueError(f"data dtype {data.dtype} / labels dtype {labels.dtype}, expected uint8 / integers")
            labels = labels.astype(np.int64)
        except _UnsafePickle as err:
            raise UsageError(f"{file}: refused to load CIFAR-10 batch file: {err}") from None
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, IndexError, AttributeError) as err:
            raise UsageError(f"{file}: corrupt CIFAR-10 batch file ({err!r})") from None
        if data.ndim != 2 or data.shape[1] != 3072:
            raise UsageError(f"{file}: unexpected data shape {data.shape}, expected [N, 3072]")
        if labels.ndim != 1 or len(data) != len(labels):
            raise UsageError(f"{file}: {len(data)} images but {labels.size} labels; the batch file is damaged")
        bad = labels[(labels < 0) | (labels >= len(CIFAR10_CLASSES))]
        if bad.size:
            raise UsageError(f"{file}: label {int(bad[0])} is not a CIFAR-10 class (0..{len(CIFAR10_CLASSES) - 1}); "
                             "the batch file is damaged")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def _md5(path: Path) -> str:
    h = hashlib.md5()  # noqa: S324 - checksum published by the data set authors
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_cifar10(dest: str | os.PathLike, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> Path:
    """Fetch and unpack the official python release into ``dest/cifar-10-batches-py``.

    Downloads to a temporary name, verifies the MD5, extracts into a temporary folder and renames,
    so an interrupted download never leaves a half-written data set. Returns ``dest``.
    """
    dest = Path(dest).expanduser()
    target = dest / "cifar-10-batches-py"
    if (target / "test_batch").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "cifar-10-python.tar.gz"
    if not archive.is_file() or _md5(archive) != md5:
        with atomic_path(archive) as tmp:  # removed again on a failed download or a checksum mismatch
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310
                shutil.copyfileobj(resp, out)
            got = _md5(tmp)
            if got != md5:
                raise UsageError(f"checksum mismatch for {url}: md5 {got}, expected {md5}")
    # a folder cannot go through atomic_path (a file writer): unpack beside the target, then rename it into place
    tmp_dir = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp_dir, **kwargs)  # noqa: S202 - filtered where supported
        os.replace(tmp_dir / "cifar-10-batches-py", target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return dest
