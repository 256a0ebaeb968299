"""Input validation shared by the public entry points: clear errors naming the argument and the problem."""

from __future__ import annotations

import contextlib
import contextvars
import numbers
from collections.abc import Iterator

import torch
from torch import Tensor

from freqpure.errors import UsageError

__all__ = ["check_images", "check_int", "compute_dtype", "as_compute_dtype", "trusted_images", "values_trusted"]

_TRUSTED: contextvars.ContextVar[bool] = contextvars.ContextVar("freqpure_trusted_images", default=False)


@contextlib.contextmanager
def trusted_images() -> Iterator[None]:
    """Inside: :func:`check_images` checks shapes and types only, not values (NaN/Inf, range).

    For loops whose images were validated once at the API edge and stay valid by construction (PGD's
    iterates are clamped into [0, 1]): the value checks read the tensor back to the host, a device sync
    per call on a GPU.
    """
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def values_trusted() -> bool:
    """True inside :func:`trusted_images`."""
    return _TRUSTED.get()


def check_images(
    x: Tensor,
    name: str = "x",
    *,
    channels: int | None = None,
    size: int | tuple[int, int] | None = None,
    value_range: tuple[float, float] | None = (0.0, 1.0),
    clamp: bool = False,
    tolerance: float = 1e-4,
) -> Tensor:
    """Validate an image batch ``[B, C, H, W]`` and return it (clamped into range if ``clamp``).

    Raises ``ValueError`` for: not a tensor / not 4-D / empty batch, non-float dtype, wrong channel
    count or spatial size, NaN or Inf, values outside ``value_range`` (beyond ``tolerance``) unless
    ``clamp`` is set. Inside :func:`trusted_images` the value checks (a host read-back) are skipped.
    """
    if not isinstance(x, Tensor):
        raise UsageError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise UsageError(f"{name} must be 4-D [B, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise UsageError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise UsageError(f"{name} must be a floating-point tensor with values in [0, 1], got dtype {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise UsageError(f"{name} must have {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if size is not None:
        want = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(x.shape[-2:]) != want:
            raise UsageError(
                f"{name} must be {want[0]}x{want[1]} for this model, got {x.shape[-2]}x{x.shape[-1]}; "
                "resize it first (see PurifiedClassifier's preprocess)"
            )
    if not values_trusted():
        _check_values(x, name, value_range, clamp, tolerance)
    if value_range is not None and clamp:
        x = x.clamp(*value_range)
    return x


def _check_values(x: Tensor, name: str, value_range: tuple[float, float] | None, clamp: bool,
                  tolerance: float) -> None:
    """NaN/Inf and range checks of :func:`check_images` (read back to the host: a sync on a GPU)."""
    with torch.no_grad():
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise UsageError(f"{name} contains {bad} NaN/Inf values")
        if value_range is not None:
            lo, hi = value_range
            xmin, xmax = float(x.min()), float(x.max())
            if (xmin < lo - tolerance or xmax > hi + tolerance) and not clamp:
                raise UsageError(
                    f"{name} has values in [{xmin:.4g}, {xmax:.4g}], outside [{lo}, {hi}]; images must be "
                    f"scaled to [{lo}, {hi}] (pass clamp=True to clip them)"
                )


def check_int(value: object, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int (numpy integers too; no bools, no floats), optionally within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UsageError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"in {low}..{high}" if high is not None else f">= {low}"
        raise UsageError(f"{name} must be {span}, got {value}")
    return value


def compute_dtype(module: object) -> torch.dtype:
    """The floating dtype of ``module``'s parameters (float32 when it has none)."""
    params = getattr(module, "parameters", None)
    if callable(params):
        for p in params():
            if p.is_floating_point():
                return p.dtype
    return torch.float32


def as_compute_dtype(x: Tensor, dtype: torch.dtype) -> Tensor:
    """float16/bfloat16/float64 images are converted to the model's dtype (gradients flow through the cast)."""
    return x if x.dtype == dtype or not x.is_floating_point() else x.to(dtype)
