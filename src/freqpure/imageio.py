"""Reading and writing image files (PNG/JPEG) as ``[B, C, H, W]`` tensors in [0, 1]."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from freqpure._fileio import atomic_path
from freqpure.errors import NotFoundError, UsageError

__all__ = ["IMAGE_SUFFIXES", "collect_images", "read_image", "read_images", "write_png"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def collect_images(inputs: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """Expand files and folders (searched recursively) into ``(path, relative output name)`` pairs.

    Raises ``FileNotFoundError`` for a missing input and ``ValueError`` when nothing is found.
    """
    found: list[tuple[Path, Path]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise UsageError(f"no PNG/JPEG images found in folder {path}")
            found += [(p, p.relative_to(path).with_suffix(".png")) for p in files]
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise UsageError(f"{path} is not a PNG or JPEG file (suffix {path.suffix!r})")
            found.append((path, Path(path.stem + ".png")))
        else:
            raise NotFoundError(f"input not found: {path}")
    if not found:
        raise UsageError("no input images given")
    names = [name for _, name in found]
    if len(set(names)) != len(names):
        dupes = sorted({str(n) for n in names if names.count(n) > 1})
        raise UsageError(f"several inputs would be written to the same output name: {', '.join(dupes[:5])}")
    return found


def read_image(path: str | Path) -> Tensor:
    """One RGB image → ``[3, H, W]`` float32 in [0, 1]. Corrupt or unreadable files raise ``ValueError``."""
    try:
        with Image.open(path) as img:
            img.load()
            array = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise UsageError(f"cannot read image {path}: {err}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def read_images(paths: Sequence[str | Path], size: int | None = None) -> Tensor:
    """Several images of one size → ``[B, 3, H, W]`` in [0, 1]; ``size`` resizes each (bilinear, antialiased)."""
    images = []
    for path in paths:
        img = read_image(path)
        if size is not None and tuple(img.shape[-2:]) != (size, size):
            img = torch.nn.functional.interpolate(
                img[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )[0].clamp(0, 1)
        images.append(img)
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) > 1:
        raise UsageError(f"images in one batch differ in size: {sorted(shapes)}; pass a size to resize them")
    return torch.stack(images)


def write_png(image: Tensor, path: str | Path) -> None:
    """``[3, H, W]`` in [0, 1] (clipped, rounded) → PNG, written atomically (temp file, then rename)."""
    array = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
