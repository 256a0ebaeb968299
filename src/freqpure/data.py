"""Data loading: CIFAR-10 (python batches, ImageFolder, tar of class folders) and ImageNet validation.

Array conventions:

* ``uint8`` images are ``[N, H, W, 3]`` (HWC, as stored on disk);
* ``float`` images are ``[N, 3, H, W]`` in ``[0, 1]`` (classifier space; the diffusion models take
  ``2·x − 1``);
* labels are ``int64 [N]`` in the canonical CIFAR-10 order :data:`CIFAR10_CLASSES`.

Where CIFAR-10 is looked for (first hit wins), see :func:`find_cifar10_dir`: an explicit ``data_dir``,
``$FREQPURE_DATA`` (the folder itself or its ``cifar10/`` sub-folder; when set, the only place
looked in, and it must exist), ``<repo>/data/cifar10``, ``<repo>/../shared/data/cifar10`` and
``~/.cache/freqpure/cifar10``. The working directory is not searched.
A folder qualifies if it holds ``{split}.tar``, ``cifar-10-batches-py/`` or ``{split}/<class>/`` images.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from freqpure._fileio import atomic_path
from freqpure.errors import NotFoundError, UsageError

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "IMAGE_EXTENSIONS",
    "find_cifar10_dir",
    "cifar10_search_paths",
    "load_cifar10",
    "load_cifar10_tensors",
    "load_cifar10_tar",
    "load_cifar10_batches",
    "load_image_folder",
    "download_cifar10",
    "to_float",
    "eval_subset_indices",
    "eval_subset",
    "EvalSubset",
    "ArrayDataset",
    "ImageFolderDataset",
    "imagenet_val",
    "resize_center_crop",
    "stack_dataset",
]

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
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff", ".JPEG")
_SPLITS = ("train", "test")
_REPO = Path(__file__).resolve().parents[2]  # <repo>/src/freqpure/data.py -> <repo>

# In-memory cache of decoded splits: key (path, size, mtime_ns) -> (x, y). Arrays are read-only.
_CACHE: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}


# ----------------------------------------------------------------------------------------------
# Locating the data
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Format readers
# ----------------------------------------------------------------------------------------------
def _decode(data: bytes, where: str, size: int | None) -> np.ndarray:
    """Decode one image file to uint8 ``[H, W, 3]``; ``size`` checks a square side length."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UsageError(f"{where}: cannot decode image ({err})") from None
    if size is not None and arr.shape[:2] != (size, size):
        raise UsageError(f"{where}: image is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size}")
    return arr


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


def _cached(path: Path, loader: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
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
                    data = tar.extractfile(m).read()
                    if len(data) != m.size:
                        raise UsageError(f"{where}: truncated member ({len(data)} of {m.size} bytes)")
                    labels.append(_class_of(m.name, classes, str(path)))
                    images.append(_decode(data, where, image_size))
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

    return _cached(path, load) if cache else load()


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


def load_image_folder(
    root: str | os.PathLike,
    classes: Sequence[str] | None = None,
    image_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read an ImageFolder (``root/<class>/<image>``) of equally sized images into memory.

    ``classes`` fixes the label order (default: sorted folder names). Returns uint8 ``[N, H, W, 3]``,
    int64 ``[N]`` and the class list. For large sets (ImageNet) use :class:`ImageFolderDataset`.
    """
    files, labels, classes = _list_image_folder(root, classes)
    images = [_decode(f.read_bytes(), str(f), image_size) for f in files]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise UsageError(f"{root}: images have different sizes {sorted(shapes)}; pass image_size or resize")
    return np.stack(images), np.asarray(labels, dtype=np.int64), list(classes)


def _list_image_folder(
    root: str | os.PathLike, classes: Sequence[str] | None
) -> tuple[list[Path], list[int], list[str]]:
    root = Path(root)
    if not root.is_dir():
        raise NotFoundError(f"image folder {root} does not exist")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    if classes is None:
        classes = found
        if not classes:
            raise UsageError(f"{root}: no class sub-folders found")
    missing = [c for c in classes if c not in found]
    if missing:
        raise UsageError(f"{root}: missing class folders {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    files: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        members = sorted(p for p in (root / cls).iterdir() if p.is_file() and p.name.endswith(IMAGE_EXTENSIONS))
        if not members:
            raise UsageError(f"{root / cls}: class folder holds no images")
        files += members
        labels += [label] * len(members)
    return files, labels, list(classes)


# ----------------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Public loading API
# ----------------------------------------------------------------------------------------------
def load_cifar10(
    split: str = "test", data_dir: str | os.PathLike | None = None, *, download: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Load a CIFAR-10 split as uint8 ``[N, 32, 32, 3]`` and int64 labels ``[N]``.

    Formats, in order of preference inside the found folder: ``{split}.tar`` (class folders),
    ``cifar-10-batches-py/`` (official python batches), ``{split}/<class>/`` (ImageFolder).
    Image order: class-grouped member order for tar/ImageFolder, the official order for batches.
    With ``download=True`` and nothing found, fetch the official archive into ``data_dir`` (or
    ``~/.cache/freqpure/cifar10``).
    """
    if split not in _SPLITS:
        raise UsageError(f"split must be one of {_SPLITS}, got {split!r}")
    try:
        folder = find_cifar10_dir(data_dir, split)
    except FileNotFoundError:
        if not download:
            raise
        folder = download_cifar10(data_dir or Path.home() / ".cache" / "freqpure" / "cifar10")
    if (folder / f"{split}.tar").is_file():
        return load_cifar10_tar(folder / f"{split}.tar")
    if (folder / "cifar-10-batches-py").is_dir():
        batches = folder / "cifar-10-batches-py"
        return _cached(
            batches / ("test_batch" if split == "test" else "data_batch_1"),
            lambda: load_cifar10_batches(batches, split),
        )
    x, y, _ = load_image_folder(folder / split, CIFAR10_CLASSES, image_size=32)
    return x, y


def load_cifar10_tensors(
    split: str = "test", data_dir: str | os.PathLike | None = None, *, download: bool = False
) -> tuple[Tensor, Tensor]:
    """A CIFAR-10 split as float32 ``[N, 3, 32, 32]`` in [0, 1] and int64 labels ``[N]``."""
    x, y = load_cifar10(split, data_dir, download=download)
    return to_float(x), torch.tensor(y, dtype=torch.int64)


def to_float(x: np.ndarray | Tensor) -> Tensor:
    """uint8 ``[N, H, W, 3]`` → float32 ``[N, 3, H, W]`` in ``[0, 1]``."""
    if isinstance(x, Tensor):
        t = x
    else:
        arr = np.asarray(x)
        if not arr.flags.writeable:
            arr = arr.copy()  # torch warns about read-only arrays (the cached splits are read-only)
        t = torch.from_numpy(arr)
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise UsageError(f"expected uint8 [N, H, W, 3], got {t.dtype} {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


# ----------------------------------------------------------------------------------------------
# Deterministic evaluation subsets
# ----------------------------------------------------------------------------------------------
def eval_subset_indices(labels: np.ndarray | Tensor, n: int = 512, seed: int = 0) -> np.ndarray:
    """Class-balanced, deterministic subset of ``n`` indices into ``labels`` (sorted, int64).

    Each of the C classes gets ``n // C`` images; the ``n % C`` leftovers go one each to the
    first classes of a seeded permutation of the classes. Within a class the images are the first
    of a seeded permutation of its indices (``numpy.random.Generator(PCG64(seed))``), so the same
    ``(labels, n, seed)`` always gives the same indices, on every platform and numpy version with
    PCG64, and a smaller ``n`` is *not* guaranteed to be a prefix of a larger one.
    """
    y = np.asarray(labels).astype(np.int64)
    classes = np.unique(y)
    c = len(classes)
    if not 0 < n <= len(y):
        raise UsageError(f"n must be in 1..{len(y)}, got {n}")
    rng = np.random.Generator(np.random.PCG64(seed))
    extra = set(rng.permutation(c)[: n % c].tolist())
    chosen = []
    for i, cls in enumerate(classes):
        members = np.flatnonzero(y == cls)
        k = n // c + (1 if i in extra else 0)
        if k > len(members):
            raise UsageError(f"class {int(cls)} has {len(members)} images, need {k} for a balanced subset of {n}")
        chosen.append(members[rng.permutation(len(members))[:k]])
    return np.sort(np.concatenate(chosen))


@dataclass(frozen=True)
class EvalSubset:
    """A fixed evaluation subset: ``x`` float ``[n, 3, 32, 32]`` in [0, 1], ``y`` int64 ``[n]``,
    ``indices`` into the loaded split."""

    x: Tensor
    y: Tensor
    indices: np.ndarray


def eval_subset(
    n: int = 512, seed: int = 0, *, split: str = "test", data_dir: str | os.PathLike | None = None
) -> EvalSubset:
    """The deterministic class-balanced subset of a CIFAR-10 split (see :func:`eval_subset_indices`).

    ``eval_subset()`` (n=512, seed=0) is freqpure's standard quick-evaluation set: 51 or 52 images
    per class of the test split. Indices refer to the loader's order (class-grouped for the shared
    tar archives), so report the data source together with the subset.
    """
    x, y = load_cifar10(split, data_dir)
    idx = eval_subset_indices(y, n, seed)
    return EvalSubset(to_float(x[idx]), torch.from_numpy(y[idx].copy()), idx)


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------
class ArrayDataset(Dataset):
    """In-memory images: item ``i`` is (float ``[3, H, W]`` in [0, 1], int label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        if len(images) != len(labels):
            raise UsageError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels

    @classmethod
    def cifar10(cls, split: str = "test", data_dir: str | os.PathLike | None = None) -> ArrayDataset:
        return cls(*load_cifar10(split, data_dir))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return to_float(self.images[i : i + 1])[0], int(self.labels[i])

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images float ``[N, 3, H, W]`` in [0, 1] and int64 labels ``[N]``."""
        return to_float(self.images), torch.as_tensor(np.asarray(self.labels), dtype=torch.int64)


def resize_center_crop(img: Image.Image, resize: int = 256, crop: int = 256) -> np.ndarray:
    """Resize the shorter side to ``resize`` (bicubic), centre-crop ``crop``² → uint8 ``[crop, crop, 3]``."""
    img = img.convert("RGB")
    w, h = img.size
    scale = resize / min(w, h)
    nw, nh = max(crop, round(w * scale)), max(crop, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - crop) // 2, (nh - crop) // 2
    return np.asarray(img.crop((left, top, left + crop, top + crop)))


class ImageFolderDataset(Dataset):
    """Lazily decoded ImageFolder (``root/<class>/<image>``), resized and centre-cropped.

    Item ``i`` is (float ``[3, crop, crop]`` in [0, 1], int label). Labels follow ``classes`` (default:
    sorted folder names, which for ImageNet synsets ``n01440764`` … is the standard label order).
    """

    def __init__(
        self, root: str | os.PathLike, classes: Sequence[str] | None = None, resize: int = 256, crop: int = 256
    ) -> None:
        if crop > resize:
            raise UsageError(f"crop ({crop}) must not exceed resize ({resize})")
        self.files, labels, self.classes = _list_image_folder(root, classes)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.resize, self.crop = resize, crop

    def __len__(self) -> int:
        return len(self.files)

    def load_uint8(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 ``[crop, crop, 3]``."""
        f = self.files[i]
        try:
            with Image.open(f) as img:
                return resize_center_crop(img, self.resize, self.crop)
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise UsageError(f"{f}: cannot decode image ({err})") from None

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return to_float(self.load_uint8(i)[None])[0], int(self.labels[i])


def imagenet_val(root: str | os.PathLike, resize: int = 256, crop: int = 256) -> ImageFolderDataset:
    """ImageNet validation set as an ImageFolder of 1000 synset folders.

    Default: shorter side resized to 256, centre crop 256×256 (the resolution of the 256×256
    guided-diffusion model used for purification; classifiers later take a 224 centre crop).
    """
    root = Path(root)
    if (root / "val").is_dir() and not any(p.name.startswith("n") for p in root.iterdir() if p.is_dir()):
        root = root / "val"
    return ImageFolderDataset(root, None, resize, crop)


def stack_dataset(dataset: Dataset, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
    """Gather items of a dataset into float ``[n, 3, H, W]`` and int64 ``[n]`` tensors."""
    items = [dataset[int(i)] for i in indices]
    if not items:
        raise UsageError("no indices given")
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)
