"""Process-wide runtime policy: CPU threads and numeric precision.

Every command and pipeline goes through these two functions, so one policy holds everywhere:

* :func:`configure_threads` — how many CPU threads torch uses (``--threads``; ``None`` = the
  project's default policy, see the function).
* :func:`resolve_precision` / :func:`autocast` — ``precision: auto | fp32 | bf16`` for the ε-model
  and the classifier (autocast; inputs, outputs and gradients w.r.t. the input stay fp32).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from freqpure.errors import UsageError

__all__ = ["PRECISIONS", "Autocast", "autocast", "configure_threads", "default_threads", "ensure_thread_policy",
           "resolve_precision", "run_in_precision"]

PRECISIONS = ("auto", "fp32", "bf16")

# Thread policy state. ``_THREADS_AT_IMPORT``: torch's count when freqpure was imported, so that a later
# ``torch.set_num_threads`` by the user can be told apart from torch's own default. ``_threads_settled``:
# a command, :func:`configure_threads` or the first purifier call has decided the count for this process.
_THREADS_AT_IMPORT = torch.get_num_threads()
_threads_settled = False


def default_threads() -> int:
    """The project's default CPU thread count: the cores that are idle when the command starts.

    ``cores available to this process − round(1-minute load average)``, at least 1 and at most
    torch's own choice (which already honours ``$OMP_NUM_THREADS``). On a loaded two-core machine
    that is one thread: two threads there wait on each other (measured in benchmarks/thread_policy.py).
    """
    from freqpure._threadenv import idle_cores

    return max(1, min(torch.get_num_threads(), idle_cores()))


def configure_threads(threads: int | None = None) -> int:
    """Set torch's CPU thread count and return it.

    ``threads``: an explicit count (>= 1); ``None``: ``$FREQPURE_THREADS`` if set, else
    ``$OMP_NUM_THREADS`` if set (torch's reading of it), else :func:`default_threads`.
    ``FREQPURE_THREAD_POLICY=torch`` keeps torch's own default instead (the pre-policy behaviour).
    The other half of the policy, a passive OpenMP wait, is set before torch loads
    (:mod:`freqpure._threadenv`). Once called, purifiers leave the count alone (:func:`ensure_thread_policy`).
    """
    _settle()
    if threads is None and os.environ.get("FREQPURE_THREADS"):
        raw = os.environ["FREQPURE_THREADS"]
        try:
            threads = int(raw)
        except ValueError:
            raise UsageError(f"FREQPURE_THREADS must be a positive integer, got {raw!r}") from None
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS") or os.environ.get("FREQPURE_THREAD_POLICY", "").lower() == "torch":
            return torch.get_num_threads()
        threads = default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UsageError(f"threads must be a positive integer, got {threads!r}")
    limit = max(64, 4 * (os.cpu_count() or 1))
    if threads > limit:  # torch crashes (a segfault) on absurd counts, from --threads or $FREQPURE_THREADS alike
        raise UsageError(f"threads must be at most {limit} (this machine has {os.cpu_count()} cores), got {threads}")
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def _settle() -> None:
    global _threads_settled
    _threads_settled = True


def ensure_thread_policy() -> int | None:
    """Apply the default thread policy once per process, whatever the import order; returns the count it set.

    Called by every purifier at its first call, so that ``import torch, freqpure`` gets the same thread count
    as ``import freqpure, torch`` (the OpenMP wait policy can only be chosen before torch loads; the count can
    be chosen at any time). Does nothing when a command or :func:`configure_threads` already chose, when the
    user changed torch's count (``torch.set_num_threads``) after importing freqpure, or under
    ``FREQPURE_THREAD_POLICY=torch``; otherwise it is :func:`configure_threads` with ``None``
    (``$FREQPURE_THREADS``, ``$OMP_NUM_THREADS``, else the idle cores).
    """
    if _threads_settled:
        return None
    _settle()
    if os.environ.get("FREQPURE_THREAD_POLICY", "").lower() == "torch":
        return None
    if torch.get_num_threads() != _THREADS_AT_IMPORT:  # the user chose with torch.set_num_threads
        return None
    return configure_threads(None)


@functools.cache
def _cpu_has_fast_bf16() -> bool:
    """AMX-BF16 only: on a CPU with AVX512-BF16 but no AMX (this project's Xeon VMs) bf16 autocast ran the
    bundled UNet 0.8x as fast as fp32 (benchmarks/RESULTS.md, "Speed"), so ``auto`` stays fp32 there."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str = "cpu", model: Any = None,
                      args: tuple[Any, ...] | None = None, fn: Any = None) -> str:
    """``auto`` → ``bf16`` where it is measured to pay off, else ``fp32``.

    With a ``model`` (and the ``args`` of a call) ``auto`` is measured: fp32 against bf16 on the first use,
    cached per machine and model (:func:`freqpure.precision.measured_precision`); with a registry name
    (``model="cifar10-ddpm-small"``, no ``args``) that model is loaded and timed on a probe batch
    (:func:`freqpure.precision.probe_precision`). Without a model, or when it cannot be loaded, it is the
    guess from the hardware (CPUs with AMX-BF16, CUDA with bf16).
    ``$FREQPURE_PRECISION`` (``fp32`` or ``bf16``), when set, is what ``auto`` means (the test suite pins
    it to ``fp32`` so that exact reference values hold on every machine); explicit values always win.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    forced = os.environ.get("FREQPURE_PRECISION")
    if forced:
        if forced not in ("fp32", "bf16"):
            raise UsageError(f"FREQPURE_PRECISION must be fp32 or bf16, got {forced!r}")
        return forced
    device = torch.device(device)
    if model is not None:
        from freqpure.precision import measured_precision, probe_precision

        decision = (probe_precision(model, device) if isinstance(model, str) and args is None
                    else measured_precision(model, args or (), device, fn=fn))
        if decision is not None:
            return decision.choice
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


def run_in_precision(fn: Any, precision: str, *args: Tensor, model: Any = None) -> Tensor:
    """``fn(*args)`` under :func:`autocast` on the device of ``args[0]``, the result cast back to its dtype.

    The arguments stay fp32 (autocast casts them inside the matmuls/convolutions), so the gradient with
    respect to them is fp32 too; only the network's own arithmetic is rounded to ``precision``. ``auto`` is
    measured on the first call (``model``, default ``fn``, names the cache entry; see :func:`resolve_precision`).
    """
    if precision == "fp32":
        return fn(*args)
    x = args[0]
    if precision == "auto":
        precision = resolve_precision("auto", x.device, model=fn if model is None else model, args=args, fn=fn)
        if precision == "fp32":
            return fn(*args)
    with autocast(precision, x.device):
        out = fn(*args)
    return out.to(x.dtype) if out.is_floating_point() else out


class Autocast(nn.Module):
    """``module`` run under :func:`autocast` (``precision``: ``auto``, ``fp32`` or ``bf16``); the output is cast
    back to the input's dtype. Attribute look-ups fall through to ``module`` (``num_classes``, ...)."""

    def __init__(self, module: nn.Module, precision: str) -> None:
        super().__init__()
        resolve_precision(precision)  # refuse a bad name now, not at the first call
        self.module = module
        self.precision = precision
        self.train(module.training)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return run_in_precision(lambda x_: self.module(x_, *args, **kwargs), self.precision, x, model=self.module)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)

    def extra_repr(self) -> str:
        return f"precision={self.precision}"
