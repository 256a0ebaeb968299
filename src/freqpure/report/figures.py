"""The report's pictures: images and spectra as PNG ``data:`` URIs, colour maps, the example grid and the
accuracy plot."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from freqpure.report.inputs import RunData
from freqpure.spectral import centred_spectrum, wrap_phase

__all__ = ["png_bytes", "data_uri", "image_png", "colour_map", "spectra", "image_view", "grid_png", "accuracy_png",
           "spectra_rows", "colour_bar", "axes_key", "SEQUENTIAL", "CYCLIC"]


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 ``[H, W]`` or ``[H, W, 3]`` → PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _display_size(h: int, w: int, target: int = 96, largest: int = 192) -> tuple[int, int]:
    if max(h, w) > largest:
        scale = largest / max(h, w)
        return max(1, round(w * scale)), max(1, round(h * scale))
    k = max(1, target // max(h, w))
    return w * k, h * k


def image_png(chw: np.ndarray, target: int = 96) -> bytes:
    """A float image ``[C, H, W]`` in [0, 1] → PNG (RGB for C = 3, else the channel mean in grey),
    upscaled (nearest) to about ``target`` px, or shrunk (Lanczos) when larger than 192 px."""
    arr = np.clip(np.asarray(chw, dtype=np.float64), 0, 1)
    arr = (arr * 255 + 0.5).astype(np.uint8)
    arr = arr[:3].transpose(1, 2, 0) if arr.shape[0] == 3 else arr.mean(axis=0).astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(arr))
    size = _display_size(arr.shape[0], arr.shape[1], target)
    resample = Image.NEAREST if size[0] >= arr.shape[1] else Image.LANCZOS
    buf = io.BytesIO()
    img.resize(size, resample).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# Anchor colours of two colour maps (interpolated linearly): a perceptual dark→bright one for
# magnitudes, and a cyclic hue wheel for phases.
SEQUENTIAL = np.array([[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]],
                       dtype=np.float64)
CYCLIC = np.array([[230, 60, 60], [230, 200, 60], [60, 190, 90], [60, 170, 220], [110, 80, 220], [220, 70, 190],
                    [230, 60, 60]], dtype=np.float64)


def colour_map(values: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Map ``values`` ``[H, W]`` in [0, 1] to uint8 RGB ``[H, W, 3]`` through piecewise-linear ``anchors``."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0, 1) * (len(anchors) - 1)
    lo = np.minimum(v.astype(np.int64), len(anchors) - 2)
    frac = (v - lo)[..., None]
    rgb = anchors[lo] * (1 - frac) + anchors[lo + 1] * frac
    return (rgb + 0.5).astype(np.uint8)


def _map_png(values: np.ndarray, anchors: np.ndarray, target: int = 96) -> bytes:
    rgb = colour_map(values, anchors).transpose(2, 0, 1).astype(np.float64) / 255
    return image_png(rgb, target)


def _luminance(x: np.ndarray) -> np.ndarray:
    """``[N, C, H, W]`` → ``[N, H, W]`` (Rec. 601 luma for RGB, the channel mean otherwise)."""
    if x.shape[1] == 3:
        return np.tensordot(np.array([0.299, 0.587, 0.114]), x, axes=([0], [1]))
    return x.mean(axis=1)


def spectra(images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Centred log-amplitude ``log(1 + |F|)`` and phase (rad) of the luminance of each ``[C, H, W]`` image."""
    lum = torch.from_numpy(_luminance(np.stack(images).astype(np.float64)))
    spec = centred_spectrum(lum)
    return list(zip(torch.log1p(spec.abs()).numpy(), torch.angle(spec).numpy()))


def image_view(png: bytes, alt: str) -> dict[str, Any]:
    width, height = Image.open(io.BytesIO(png)).size
    return {"uri": data_uri(png), "alt": alt, "width": width, "height": height}


def grid_png(runs: Sequence[RunData], rows: int) -> bytes:
    from freqpure.plots import make_grid

    buf = io.BytesIO()
    make_grid({run.title: run.examples for run in runs if run.examples is not None}, buf, rows=rows)
    return buf.getvalue()


def accuracy_png(runs: Sequence[RunData]) -> bytes:
    from freqpure.plots import accuracy_plot

    rows = []
    for run in runs:
        r = run.results
        rows.append((run.title, "clean", r.clean.accuracy, *r.clean.ci95))
        rows.append((run.title, "robust", r.robust.accuracy, *r.robust.ci95))
    buf = io.BytesIO()
    accuracy_plot(rows, buf)
    return buf.getvalue()


def spectra_rows(ex: dict[str, np.ndarray], i: int) -> tuple[list[dict[str, Any]], str]:
    keys = [k for k in ("clean", "adversarial", "purified") if k in ex]
    if "purified" in ex and np.array_equal(ex["purified"], ex["adversarial"]):
        keys.remove("purified")
    specs = spectra([ex[k][i] for k in keys])
    amp_max = max(float(a.max()) for a, _ in specs) or 1.0
    diffs = [(np.abs(a - specs[0][0]), np.abs(wrap_phase(torch.from_numpy(p - specs[0][1])).numpy())) for a, p in specs]
    damp_max = max(float(d.max()) for d, _ in diffs) or 1.0
    rows = []
    for j, key in enumerate(keys):
        amp, phase = specs[j]
        cells = [image_view(image_png(ex[key][i]), f"{key} image"),
                 image_view(_map_png(amp / amp_max, SEQUENTIAL), f"{key} log amplitude"),
                 image_view(_map_png((phase + math.pi) / (2 * math.pi), CYCLIC), f"{key} phase")]
        if j > 0:
            da, dp = diffs[j]
            cells += [image_view(_map_png(da / damp_max, SEQUENTIAL), f"{key} amplitude change"),
                      image_view(_map_png(dp / math.pi, SEQUENTIAL), f"{key} phase change")]
        rows.append({"name": key, "cells": cells})
    return rows, f"{damp_max:.3g}", amp_max


def colour_bar(anchors: np.ndarray, width: int = 96, height: int = 10) -> bytes:
    """A horizontal colour bar of ``anchors`` (low on the left), as PNG."""
    return png_bytes(colour_map(np.repeat(np.linspace(0, 1, width)[None, :], height, axis=0), anchors))


def axes_key(height: int, width: int, size: int = 96) -> bytes:
    """The axes every spectrum thumbnail shares: frequency u left to right, v top to bottom, DC in the centre."""
    from PIL import ImageDraw

    pad = 22
    img = Image.new("RGB", (size + 2 * pad, size + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.rectangle([pad, pad, pad + size - 1, pad + size - 1], outline=(120, 120, 120))
    cx, cy = pad + size * (width // 2) / width, pad + size * (height // 2) / height
    draw.line([pad, cy, pad + size - 1, cy], fill=(190, 190, 190))
    draw.line([cx, pad, cx, pad + size - 1], fill=(190, 190, 190))
    draw.text((cx + 3, cy + 2), "DC", fill=(40, 40, 40))
    lo_u, hi_u, lo_v, hi_v = -(width // 2), (width - 1) // 2, -(height // 2), (height - 1) // 2
    draw.text((pad, pad + size + 3), str(lo_u), fill=(40, 40, 40))
    draw.text((pad + size - 12, pad + size + 3), str(hi_u), fill=(40, 40, 40))
    draw.text((cx - 3, pad + size + 3), "u", fill=(40, 40, 40))
    draw.text((2, pad), str(lo_v), fill=(40, 40, 40))
    draw.text((2, pad + size - 10), str(hi_v), fill=(40, 40, 40))
    draw.text((6, cy - 5), "v", fill=(40, 40, 40))
    return png_bytes(np.asarray(img))
