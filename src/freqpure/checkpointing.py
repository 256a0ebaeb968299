"""When to checkpoint the reverse chain under a gradient: always, never, or when it would not fit.

Gradient checkpointing (recompute each step in the backward pass) keeps memory flat in the number of
steps, at the price of one extra forward per step: on the bundled CPU models it made the attack gradient
of a 5-step plan 1.3-1.8x slower than plain backprop (``benchmarks/checkpoint_policy.py``). Both give
the same gradient to the bit, because every random draw is keyed by its step (``StepNoise``).

``"auto"`` (what attacks use) decides once per purification call: it runs the first step with its graph
and counts the bytes of the tensors autograd saves for backward (``saved_tensors_hooks``; parameters and
views count too, so the count errs high). If ``total_steps x that`` stays under :data:`MEMORY_FRACTION`
of the memory available now (RAM on CPU, free memory of the CUDA device), every step keeps its graph;
otherwise the remaining steps are checkpointed. A short plan of a small model backprops plainly; a
100-step plan or a 256x256 ADM is checkpointed as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from freqpure.errors import UsageError

__all__ = ["MEMORY_FRACTION", "CheckpointSetting", "AutoCheckpoint", "check_checkpoint_setting",
           "checkpoint_policy", "run_step", "available_memory"]

#: Share of the available memory the graph of one purification call may take before ``"auto"`` checkpoints.
MEMORY_FRACTION = 0.25

CheckpointSetting = bool | Literal["auto"]


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) and garbage read as unknown


def _ram_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0  # unknown: checkpoint (the safe choice)


def available_memory(device: torch.device) -> int:
    """Bytes available for new tensors on ``device``: free CUDA memory; on CPU the OS's available RAM,
    capped by the container's cgroup-v2 limit (``memory.max`` − ``memory.current``) where there is one."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    ram = _ram_available()
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        ram = min(ram, max(0, limit - used))
    return ram


class AutoCheckpoint:
    """The ``"auto"`` decision for one purification call of ``total_steps`` reverse steps on ``device``.

    ``checkpoint`` is ``None`` until the first step under a gradient has run (and been measured), then
    ``True`` (checkpoint the rest) or ``False`` (plain backprop). ``step_bytes``: the bytes measured.
    """

    def __init__(self, total_steps: int, device: torch.device, fraction: float = MEMORY_FRACTION) -> None:
        self.total_steps = max(1, int(total_steps))
        self.device = device
        self.fraction = fraction
        self.checkpoint: bool | None = None
        self.step_bytes = 0

    def run(self, step: Callable[[Tensor, int], Tensor], x: Tensor, i: int) -> Tensor:
        if self.checkpoint is None:
            counted = 0

            def pack(t: Tensor) -> Tensor:
                nonlocal counted
                counted += t.numel() * t.element_size()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = step(x, i)
            self.step_bytes = counted
            self.checkpoint = counted * self.total_steps > self.fraction * available_memory(self.device)
            return out
        return _checkpoint(step, x, i, use_reentrant=False) if self.checkpoint else step(x, i)


def check_checkpoint_setting(setting: object) -> CheckpointSetting:
    """``setting`` if it is ``True``, ``False`` or ``"auto"``; else a :class:`UsageError` naming it."""
    if isinstance(setting, bool) or (isinstance(setting, str) and setting == "auto"):
        return setting
    raise UsageError(f"checkpoint must be True, False or 'auto', got {setting!r}")


def checkpoint_policy(setting: CheckpointSetting | AutoCheckpoint, total_steps: int,
                      device: torch.device) -> bool | AutoCheckpoint:
    """What the samplers take for one call: ``True``/``False``, a fresh :class:`AutoCheckpoint` for
    ``"auto"``, or the caller's own :class:`AutoCheckpoint` (one decision shared across rounds)."""
    if isinstance(setting, AutoCheckpoint):
        return setting
    if check_checkpoint_setting(setting) == "auto":
        return AutoCheckpoint(total_steps, device)
    return setting


def run_step(step: Callable[[Tensor, int], Tensor], x: Tensor, i: int, checkpoint: bool | AutoCheckpoint) -> Tensor:
    """Run reverse step ``i`` of a sampler: plainly without a gradient, else as ``checkpoint`` says."""
    if not torch.is_grad_enabled() or checkpoint is False:
        return step(x, i)
    if checkpoint is True:
        return _checkpoint(step, x, i, use_reentrant=False)
    return checkpoint.run(step, x, i)
