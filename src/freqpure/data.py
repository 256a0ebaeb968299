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

The loaders by job: :mod:`freqpure.cifar10` (locating, reading and downloading CIFAR-10) and
:mod:`freqpure.imagefolder` (image folders, ImageNet validation); this module is the public loading API and the
class-balanced evaluation subset, and re-exports both modules' public names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from freqpure.cifar10 import (
    CIFAR10_CLASSES,
    CIFAR10_MD5,
    CIFAR10_URL,
    SPLITS,
    cached_split,
    cifar10_search_paths,
    download_cifar10,
    find_cifar10_dir,
    load_cifar10_batches,
    load_cifar10_tar,
)
from freqpure.errors import UsageError
from freqpure.imagefolder import (
    IMAGE_EXTENSIONS,
    ImageFolderDataset,
    decode_image,
    imagenet_val,
    load_image_folder,
    resize_center_crop,
    stack_dataset,
    to_float,
)

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
    "decode_image",
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
    if split not in SPLITS:
        raise UsageError(f"split must be one of {SPLITS}, got {split!r}")
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
        return cached_split(
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
