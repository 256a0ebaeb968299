"""When to checkpoint the reverse chain under a gradient: always, never, or when it would not fit.

Gradient checkpointing (recompute each step in the backward pass) keeps memory flat in the number of
steps, at the price of one extra forward per step: on the bundled CPU models it made the attack gradient
of a 5-step plan 1.3-1.8x slower than plain backprop (``benchmarks/checkpoint_policy.py``). Both give
the same gradient to the bit, because every random draw is keyed by its step (``StepNoise``).

``"auto"`` decides once per purification call: it runs the first step with its graph and counts the
bytes of the tensors autograd saves for backward (``saved_tensors_hooks``; parameters and views count
too, so the count errs high). If ``total_steps x that`` stays under :data:`MEMORY_FRACTION` of the memory
available now (RAM on CPU; on CUDA the device's free memory plus what PyTorch's caching allocator holds
reserved but unused, which it reuses before asking the device), every step keeps its graph; otherwise
the remaining steps are checkpointed. A short plan of a small model backprops plainly; a 100-step plan
or a 256x256 ADM is checkpointed as before.

Attacks use :class:`RunCheckpoint` (still the setting ``"auto"``): the first call under a gradient
decides, and every later call of the attack run keeps that decision, so it cannot flip between PGD
iterations as the cache fills and empties; :meth:`RunCheckpoint.summary` says what was decided and why
(the evaluation writes it into results.json, ``protocol.gradient_memory``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from freqpure.errors import UsageError

__all__ = ["MEMORY_FRACTION", "CheckpointSetting", "AutoCheckpoint", "RunCheckpoint", "check_checkpoint_setting",
           "checkpoint_policy", "run_step", "available_memory", "run_decisions"]

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
    """Bytes available for new tensors on ``device``. CUDA: the device's free memory plus the caching
    allocator's reclaimable cache (reserved − allocated: blocks PyTorch holds but no tensor uses). CPU: the
    OS's available RAM, capped by the container's cgroup-v2 limit (``memory.max`` − ``memory.current``)."""
    if device.type == "cuda":
        free = int(torch.cuda.mem_get_info(device)[0])
        return free + max(0, int(torch.cuda.memory_reserved(device)) - int(torch.cuda.memory_allocated(device)))
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
        self.available_bytes: int | None = None

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
            self.available_bytes = available_memory(self.device)
            self.checkpoint = counted * self.total_steps > self.fraction * self.available_bytes
            return out
        return _checkpoint(step, x, i, use_reentrant=False) if self.checkpoint else step(x, i)


class RunCheckpoint(str):
    """The setting ``"auto"`` (it compares equal to it), decided once for a whole attack run.

    The first purification call under a gradient measures and decides (:class:`AutoCheckpoint`); every
    later call gets that decision (``True``/``False``) without measuring again. Calls without a gradient
    decide nothing. Shared by reference: give each attack run its own.
    """

    def __new__(cls, fraction: float = MEMORY_FRACTION) -> RunCheckpoint:
        obj = super().__new__(cls, "auto")
        obj.fraction = fraction
        obj.decision = None
        return obj

    def policy(self, total_steps: int, device: torch.device) -> bool | AutoCheckpoint:
        """What one purification call of ``total_steps`` steps on ``device`` runs with."""
        if self.decision is not None and self.decision.checkpoint is not None:
            return self.decision.checkpoint
        self.decision = AutoCheckpoint(total_steps, device, self.fraction)
        return self.decision

    def summary(self) -> dict[str, object]:
        """The decision and its inputs (``{"decided": False}`` before any call under a gradient)."""
        d = self.decision
        if d is None or d.checkpoint is None:
            return {"decided": False}
        return {"decided": True, "checkpoint": d.checkpoint, "device": str(d.device), "total_steps": d.total_steps,
                "step_bytes": d.step_bytes, "graph_bytes": d.step_bytes * d.total_steps,
                "available_bytes": d.available_bytes, "fraction": d.fraction}

    def text(self) -> str:
        """:meth:`summary` in one line."""
        s = self.summary()
        if not s["decided"]:
            return "auto, not decided in this invocation (no gradient call ran)"
        graph, avail = s["graph_bytes"] / 2**30, (s["available_bytes"] or 0) / 2**30
        verdict = "checkpointed" if s["checkpoint"] else "plain backprop"
        sign = ">" if s["checkpoint"] else "<="
        return (f"{verdict}: graph of {s['total_steps']} steps ~{graph:.3g} GiB {sign} {s['fraction']:.0%} of "
                f"{avail:.3g} GiB available on {s['device']} (decided once for the attack run)")

    def __getnewargs__(self) -> tuple[float]:
        return (self.fraction,)

    def __copy__(self) -> RunCheckpoint:
        return self  # a shallow copy of a purifier keeps the run's one decision

    def __deepcopy__(self, memo: dict) -> RunCheckpoint:
        return RunCheckpoint(self.fraction)  # a deep copy decides afresh


def run_decisions(models: dict[object, object]) -> dict[object, RunCheckpoint]:
    """The :class:`RunCheckpoint` of each model (found through ``.purifier`` attributes, three deep)."""
    found = {}
    for key, model in models.items():
        node = model
        for _ in range(4):
            setting = getattr(node, "checkpoint", None)
            if isinstance(setting, RunCheckpoint):
                found[key] = setting
                break
            node = getattr(node, "purifier", None)
            if node is None:
                break
    return found


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
    if isinstance(setting, RunCheckpoint):
        return setting.policy(total_steps, device)
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
