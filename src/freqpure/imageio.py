"""Reading and writing image files (PNG/JPEG) as ``[B, C, H, W]`` tensors in [0, 1].

Nothing is converted silently. An 8-bit RGB PNG or JPEG is read as it is; anything else needs a
conversion, which is refused unless the caller allows it (``convert=True``), and every conversion
that happens is reported (:class:`LoadedImage.conversions`) so that it can be recorded:

* greyscale (8-bit ``L``, bilevel ``1``, 16-bit ``I;16``/``I``) → RGB by repeating the channel,
  16-bit values scaled by 1/65535 (not clipped at 255, which would make them white);
* an alpha channel that is not fully opaque → composited onto white (a fully opaque one is dropped
  and recorded, with or without ``convert``: that loses nothing);
* a palette image → its RGB colours (lossless; recorded);
* CMYK JPEG → RGB.

Always refused: animated images (APNG, GIF: only one frame would be read), files whose content is
not PNG or JPEG whatever their name, floating-point images, images over :data:`MAX_PIXELS`, and
anything that is not a regular file (a device, a FIFO).
"""

from __future__ import annotations

import stat
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from freqpure._fileio import atomic_path
from freqpure.errors import NotFoundError, UsageError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "ImageInfo",
    "LoadedImage",
    "collect_images",
    "inspect_image",
    "load_image",
    "read_image",
    "read_images",
    "write_png",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_PIXELS = 64 * 1024 * 1024  # 8192 x 8192; larger files are refused before they are decoded
_FORMATS = ("PNG", "JPEG")
_GREY = {"L", "1", "I", "I;16", "I;16L", "I;16B", "I;16N"}
_SIXTEEN_BIT = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


@dataclass(frozen=True)
class ImageInfo:
    """What an image file's header says: ``format`` (PNG/JPEG), PIL ``mode``, ``width``×``height``, ``frames``."""

    path: Path
    format: str
    mode: str
    width: int
    height: int
    frames: int
    bits: int = 8  # bits per channel as stored (a 16-bit colour PNG is read as 8-bit by PIL)

    def conversions(self) -> list[str]:
        """The conversions reading this file as 8-bit RGB needs (empty: none)."""
        mode, out = self.mode, []
        if self.bits == 16 and mode in ("RGB", "RGBA"):
            out.append(f"16-bit colour ({mode}) -> 8 bits per channel (the high byte of each value is kept)")
        if mode in _SIXTEEN_BIT:
            out.append(f"16-bit greyscale ({mode}) -> RGB, values / 65535")
        elif mode in _GREY:
            out.append(f"greyscale ({mode}) -> RGB")
        elif mode == "LA":
            out.append("greyscale with alpha (LA) -> RGB")
        elif mode == "P":
            out.append("palette (P) -> RGB")
        elif mode == "PA":
            out.append("palette with alpha (PA) -> RGB")
        elif mode == "CMYK":
            out.append("CMYK -> RGB")
        return out


@dataclass
class LoadedImage:
    """An image as ``[3, H, W]`` float32 in [0, 1] and the conversions applied to get it."""

    image: Tensor
    info: ImageInfo
    conversions: list[str] = field(default_factory=list)


def _regular_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise NotFoundError(f"input not found: {path}") from None
    except OSError as err:
        raise UsageError(f"cannot read image {path}: {err.strerror or err}") from None
    if not stat.S_ISREG(mode):
        kind = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
        raise UsageError(f"{path} is {kind}, not a regular image file")


def _open(path: Path) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UsageError(f"{path} is too large to read safely (over {Image.MAX_IMAGE_PIXELS} pixels); "
                             "resize it first") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise UsageError(f"cannot read image {path}: {err}") from None


def _png_bit_depth(path: Path) -> int:
    """Bits per channel from a PNG's IHDR chunk (byte 24 of the file); 8 when the header is not there."""
    with open(path, "rb") as f:
        head = f.read(26)
    return head[24] if len(head) == 26 and head[12:16] == b"IHDR" else 8


def inspect_image(path: str | Path) -> ImageInfo:
    """Read the header only; refuse non-files, unknown formats, animations and oversized images."""
    path = Path(path)
    _regular_file(path)
    with _open(path) as img:
        info = ImageInfo(path, img.format or "?", img.mode, img.width, img.height, int(getattr(img, "n_frames", 1)),
                         _png_bit_depth(path) if img.format == "PNG" else 8)
    if info.format not in _FORMATS:
        raise UsageError(f"{path} holds a {info.format} image, not PNG or JPEG (whatever its name says)")
    if info.frames > 1:
        raise UsageError(f"{path} is animated ({info.frames} frames); purify reads single images, so only the first "
                         "frame would be used — extract the frames first")
    if info.width * info.height > MAX_PIXELS:
        raise UsageError(f"{path} is {info.width}x{info.height} pixels, over the limit of {MAX_PIXELS} pixels; "
                         "resize it first")
    if info.width < 1 or info.height < 1:
        raise UsageError(f"{path} has no pixels ({info.width}x{info.height})")
    if info.mode in ("F", "I;32", "I;32L", "I;32B") or info.mode not in (
        {"RGB", "RGBA", "RGBX", "LA", "P", "PA", "CMYK", "YCbCr"} | _GREY
    ):
        raise UsageError(f"{path} has pixel mode {info.mode}, which purify does not read (8/16-bit grey, RGB, "
                         "RGBA or palette images are)")
    return info


def load_image(path: str | Path, *, convert: bool = False) -> LoadedImage:
    """One image → ``[3, H, W]`` float32 in [0, 1] and the conversions made (see the module docstring).

    Raises :class:`~freqpure.errors.UsageError` when a lossy conversion is needed and ``convert`` is
    false, and for every file :func:`inspect_image` refuses.
    """
    info = inspect_image(path)
    needed = info.conversions()
    if needed and not convert:
        raise UsageError(f"{info.path} needs a conversion ({'; '.join(needed)}); pass --convert to convert it "
                         "(recorded in manifest.json), or convert it yourself")
    conversions = list(needed)
    try:
        with _open(info.path) as img:
            img.load()
            array = _to_rgb(img, info, convert, conversions)
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, UsageError):
            raise
        raise UsageError(f"cannot read image {info.path}: {err}") from None
    return LoadedImage(torch.from_numpy(array).permute(2, 0, 1).contiguous(), info, conversions)


def _to_rgb(img: Image.Image, info: ImageInfo, convert: bool, conversions: list[str]) -> np.ndarray:
    """PIL image → float32 ``[H, W, 3]`` in [0, 1]."""
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        grey = np.asarray(img).astype(np.float64)
        if grey.min() < 0 or grey.max() > 65535:
            raise UsageError(f"{info.path}: {mode} values in [{grey.min():g}, {grey.max():g}], outside 0..65535")
        return np.repeat((grey / 65535.0)[..., None], 3, axis=2).astype(np.float32)
    has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA")).astype(np.float32) / 255.0
        alpha = rgba[..., 3:]
        if float(alpha.min()) >= 1.0:
            conversions.append("alpha channel dropped (fully opaque: nothing lost)")
            return np.ascontiguousarray(rgba[..., :3])
        if not convert:
            raise UsageError(f"{info.path} has transparent pixels (alpha < 255); pass --convert to composite it "
                             "onto white (recorded in manifest.json), or flatten it yourself")
        conversions.append("transparent pixels composited onto white")
        return np.ascontiguousarray(rgba[..., :3] * alpha + (1.0 - alpha))
    return np.asarray(img.convert("RGB")).astype(np.float32) / 255.0


def read_image(path: str | Path, *, convert: bool = False) -> Tensor:
    """One image → ``[3, H, W]`` float32 in [0, 1] (see :func:`load_image`)."""
    return load_image(path, convert=convert).image


def read_images(paths: Sequence[str | Path], size: int | None = None, *, convert: bool = False) -> Tensor:
    """Several images of one size → ``[B, 3, H, W]`` in [0, 1]; ``size`` resizes each (bilinear, antialiased)."""
    images = []
    for path in paths:
        img = read_image(path, convert=convert)
        if size is not None and tuple(img.shape[-2:]) != (size, size):
            img = resize_square(img, size)
        images.append(img)
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) > 1:
        raise UsageError(f"images in one batch differ in size: {sorted(shapes)}; pass a size to resize them")
    return torch.stack(images)


def resize_square(image: Tensor, size: int) -> Tensor:
    """``[3, H, W]`` → ``[3, size, size]`` (bilinear, antialiased, clipped to [0, 1])."""
    return torch.nn.functional.interpolate(
        image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )[0].clamp(0, 1)


def collect_images(inputs: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """Expand files and folders (searched recursively) into ``(path, relative output name)`` pairs.

    A single input folder maps to the output folder itself (``photos/a/b.png`` → ``a/b.png``); with several
    inputs each folder is mirrored under its own name (``a/x.png`` and ``b/x.png`` → ``a/x.png``, ``b/x.png``),
    so equal file names in different folders do not collide. A file maps to its stem with ``.png``.
    Raises ``FileNotFoundError`` for a missing input and ``ValueError`` when nothing is found or an
    input is not a regular file or folder.
    """
    inputs = list(inputs)
    found: list[tuple[Path, Path]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise UsageError(f"no PNG/JPEG images found in folder {path}")
            base = Path(path.resolve().name) if len(inputs) > 1 else Path()
            found += [(p, base / p.relative_to(path).with_suffix(".png")) for p in files]
            continue
        _regular_file(path)  # missing → NotFoundError; a device or FIFO → UsageError
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise UsageError(f"{path} is not a PNG or JPEG file (suffix {path.suffix!r})")
        found.append((path, Path(path.stem + ".png")))
    if not found:
        raise UsageError("no input images given")
    names = [name for _, name in found]
    if len(set(names)) != len(names):
        dupes = sorted({str(n) for n in names if names.count(n) > 1})
        raise UsageError(f"several inputs would be written to the same output name: {', '.join(dupes[:5])} "
                         "(folders are mirrored under their own names: rename one, or purify them one at a time)")
    return found


def write_png(image: Tensor, path: str | Path) -> None:
    """``[3, H, W]`` in [0, 1] (clipped, rounded) → PNG, written atomically (temp file, then rename)."""
    array = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
