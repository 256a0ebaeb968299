"""Process-wide runtime policy: CPU threads and numeric precision.

Every command and pipeline goes through these two functions, so one policy holds everywhere:

* :func:`configure_threads` — how many CPU threads torch uses (``--threads``; ``None`` = the
  project's default policy, see the function).
* :func:`resolve_precision` / :func:`autocast` — ``precision: auto | fp32 | bf16`` for the ε-model
  and the classifier (autocast; inputs, outputs and gradients w.r.t. the input stay fp32).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from freqpure.errors import UsageError

__all__ = ["PRECISIONS", "autocast", "configure_threads", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16")


def configure_threads(threads: int | None = None) -> int:
    """Set torch's CPU thread count and return it.

    ``threads``: an explicit count (>= 1); ``None``: ``$FREQPURE_THREADS`` if set, else torch's own
    choice. Returns the number of threads in use.
    """
    if threads is None and os.environ.get("FREQPURE_THREADS"):
        raw = os.environ["FREQPURE_THREADS"]
        try:
            threads = int(raw)
        except ValueError:
            raise UsageError(f"FREQPURE_THREADS must be a positive integer, got {raw!r}") from None
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise UsageError(f"threads must be a positive integer, got {threads!r}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()  # noqa: SIM115 - tiny read-only file
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``auto`` → ``bf16`` where it pays off (CPUs with AMX/AVX512-BF16, CUDA with bf16), else ``fp32``."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if _cpu_has_fast_bf16() else "fp32"


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str = "cpu") -> Iterator[None]:
    """Autocast context for ``precision`` (``fp32``: a no-op)."""
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        yield
