"""``batch_size: auto``: how many images an evaluation runs per batch, chosen once per invocation.

Only under ``noise_addressing: image-v1`` (the config refuses ``auto`` otherwise): there every row draws from
its own image's streams and every offered attack treats its rows independently, so the size changes the
speed, never a number. The choice is written into results.json (``protocol.batch_size``).

* **CUDA**: the largest batch that fits. A probe runs what one batch holds at its peak — the first gradient
  of every attack (EOT draws included) and the defended prediction — on :data:`PROBE_IMAGES` images, reads
  the peak memory it allocated per image, and divides :data:`MEMORY_FRACTION` of the device's free memory
  plus the allocator's reclaimable cache (:func:`freqpure.checkpointing.available_memory`) by it; multiples
  of 8 from 8 up, at most :data:`MAX_AUTO_BATCH` and the subset's size. Under ``torchrun`` every rank takes
  the smallest rank's choice (the ranks must cut the subset alike).
* **CPU** (or any other device): :data:`CPU_AUTO_BATCH`, at most the subset's size. A CPU gains little from
  batches larger than that, and the graph of a full-gradient attack on 16 CIFAR-10 images × EOT fits a few GB.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from freqpure.noise import Purpose

__all__ = ["AUTO", "CPU_AUTO_BATCH", "MAX_AUTO_BATCH", "MEMORY_FRACTION", "PROBE_IMAGES", "BatchChoice",
           "choose_batch_size", "fit_batch"]

AUTO = "auto"
CPU_AUTO_BATCH = 16
MAX_AUTO_BATCH = 1024
MEMORY_FRACTION = 0.8  # of free + reclaimable memory: the rest for the allocator's fragmentation and workspaces
PROBE_IMAGES = 2


@dataclass(frozen=True)
class BatchChoice:
    """The batch size an invocation runs and why (``reason``: one line for results.json)."""

    size: int
    reason: str

    def text(self) -> str:
        return f"{self.size}: {self.reason}"


def fit_batch(per_image_bytes: float, available_bytes: float, limit: int, fraction: float = MEMORY_FRACTION) -> int:
    """The largest batch of ``per_image_bytes`` each within ``fraction`` of ``available_bytes``: a multiple of 8
    when it is at least 8, within ``1..limit``."""
    size = int(fraction * available_bytes // max(per_image_bytes, 1.0))
    if size >= 8:
        size -= size % 8
    return max(1, min(size, int(limit)))


def choose_batch_size(cfg: Any, runner: Any, data: Any, ctx: Any = None) -> BatchChoice:
    """The batch size of this invocation: ``cfg.batch_size`` when it is a number, else the ``auto`` choice
    (see the module docstring) for ``runner``'s device, agreed across ``ctx``'s ranks."""
    n = len(data.indices)
    if cfg.batch_size != AUTO:
        return BatchChoice(int(cfg.batch_size), "the config's batch_size")
    device = runner.device
    if device.type == "cuda":
        choice = _cuda_choice(runner, data, n)
    else:
        size = min(CPU_AUTO_BATCH, n)
        choice = BatchChoice(size, f"auto on {device.type}: the default {CPU_AUTO_BATCH} "
                                   f"(freqpure.evaluation.batching.CPU_AUTO_BATCH), at most the subset's {n} images")
    agreed = _smallest_over_ranks(ctx, choice.size)
    if agreed != choice.size:
        choice = BatchChoice(agreed, f"{choice.reason}; {agreed}, the smallest rank's choice")
    return choice


def _cuda_choice(runner: Any, data: Any, n: int,
                 measure: Callable[[Any, Any, int], tuple[float, int]] | None = None) -> BatchChoice:
    from freqpure.checkpointing import available_memory

    device = runner.device
    p = min(PROBE_IMAGES, n)
    torch.cuda.synchronize(device)
    available = available_memory(device)  # free + reclaimable, before the probe
    per_image, _ = (measure or _measure_peak)(runner, data, p)
    size = fit_batch(per_image, available, min(n, MAX_AUTO_BATCH))
    return BatchChoice(size, f"auto on {device}: {per_image / 2**20:.0f} MiB per image at peak (first gradient of "
                             f"every attack and the defended prediction, measured on {p} images), "
                             f"{MEMORY_FRACTION:.0%} of {available / 2**30:.1f} GiB free + reclaimable")


def _measure_peak(runner: Any, data: Any, p: int) -> tuple[float, int]:
    """``(peak bytes per image, peak bytes)`` allocated on the runner's CUDA device by :func:`_probe` on the
    first ``p`` images."""
    device = runner.device
    pos = list(range(p))
    x, y = data.images(pos).to(device), data.labels[pos].to(device)
    images = [int(i) for i in data.indices[:p]]
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    _probe(runner, x, y, images)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    return peak / p, peak


def _probe(runner: Any, x: torch.Tensor, y: torch.Tensor, images: list[int]) -> None:
    """What one batch holds at its peak: every attack's first EOT gradient and the defended prediction (the
    numbers are thrown away: the streams are the images' own, but nothing is recorded)."""
    from freqpure.attacks.eot import EOTGradient, is_stochastic

    defence = runner.defence
    runner.defence.predict(x, runner.stream(-1, images, Purpose.CLEAN))
    for i, attack in enumerate(runner.cfg.attacks):
        model = defence.attack_model(attack)
        eot = attack.eot if is_stochastic(model) else 1
        oracle = EOTGradient(model, eot=eot, loss=attack.loss, seed=runner.stream(-1, images, Purpose.ATTACK, i),
                             max_batch=getattr(attack, "eot_batch", None))
        oracle(x, y)


def _smallest_over_ranks(ctx: Any, size: int) -> int:
    """``size`` agreed across the ranks of ``ctx`` (the smallest); ``size`` itself in one process."""
    import torch.distributed as dist

    if ctx is None or ctx.world_size == 1 or not dist.is_initialized():
        return size
    flag = torch.tensor([size], device=ctx.device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return int(flag.item())
