"""Image folders (``root/<class>/<image>``): read whole into memory, or lazily resized and centre-cropped
(ImageNet validation), and the uint8 → float conversion every loader ends with. Re-exported by
:mod:`freqpure.data`."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from freqpure.errors import NotFoundError, UsageError

__all__ = ["IMAGE_EXTENSIONS", "to_float", "decode_image", "load_image_folder", "list_image_folder",
           "resize_center_crop", "ImageFolderDataset", "imagenet_val", "stack_dataset"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff", ".JPEG")


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


def decode_image(data: bytes, where: str, size: int | None) -> np.ndarray:
    """Decode one image file to uint8 ``[H, W, 3]``; ``size`` checks a square side length."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UsageError(f"{where}: cannot decode image ({err})") from None
    if size is not None and arr.shape[:2] != (size, size):
        raise UsageError(f"{where}: image is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size}")
    return arr


def load_image_folder(
    root: str | os.PathLike,
    classes: Sequence[str] | None = None,
    image_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read an ImageFolder (``root/<class>/<image>``) of equally sized images into memory.

    ``classes`` fixes the label order (default: sorted folder names). Returns uint8 ``[N, H, W, 3]``,
    int64 ``[N]`` and the class list. For large sets (ImageNet) use :class:`ImageFolderDataset`.
    """
    files, labels, classes = list_image_folder(root, classes)
    images = [decode_image(f.read_bytes(), str(f), image_size) for f in files]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise UsageError(f"{root}: images have different sizes {sorted(shapes)}; pass image_size or resize")
    return np.stack(images), np.asarray(labels, dtype=np.int64), list(classes)


def list_image_folder(
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
        self.files, labels, self.classes = list_image_folder(root, classes)
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
