"""Sharding an evaluation across processes started by ``torchrun`` (gloo on CPU, NCCL on GPU).

Work is sharded by *batch*: rank ``r`` of ``w`` runs batches ``b`` with ``b % w == r``. Each batch's
randomness is derived from ``(seed, b)`` only, never from the rank, so any number of processes gives
the same per-sample results as one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from freqpure.errors import UsageError

__all__ = ["DistContext", "check_device_name", "init_distributed", "resolve_device"]

_DEVICE = re.compile(r"(cpu|cuda)(:\d{1,4})?")


def check_device_name(name: object, what: str = "device") -> str:
    """``name`` if it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; else a :class:`UsageError` naming ``what``.

    freqpure runs on CPUs and CUDA GPUs only: ``meta`` (no data), ``mps`` and other backends are refused,
    and so is anything torch cannot parse.
    """
    if not isinstance(name, str) or not (name == "auto" or _DEVICE.fullmatch(name)):
        raise UsageError(f"{what} {name!r} is not supported: give cpu, cuda, cuda:N or auto")
    return name


def resolve_device(name: str | None, local_rank: int = 0, what: str = "device") -> torch.device:
    """``auto`` (or ``None``) → ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; otherwise
    ``torch.device(name)``, refused (naming ``what``, e.g. ``--device``) when that device is not here.
    The one device resolver of the library and the CLI."""
    name = "auto" if name is None else name
    check_device_name(name, what)
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{what} {name} requested but no CUDA device is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"{what} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@dataclass
class DistContext:
    """This process's place in the job: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batches: list[int]) -> list[int]:
        """The batches this rank runs."""
        return [b for b in batches if b % self.world_size == self.rank]

    def barrier(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """True iff ``ok`` on every rank (a collective: every rank must call it)."""
        if self.world_size == 1 or not dist.is_initialized():
            return ok
        flag = torch.tensor([1 if ok else 0], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device_name: str = "auto") -> DistContext:
    """Join the ``torchrun`` job described by the environment (``WORLD_SIZE`` > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    ctx = DistContext(rank, world, local_rank, device)
    if world > 1 and not dist.is_initialized():
        backend = collective_backend(device, world)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        ctx.initialized_here = True
    return ctx


def collective_backend(device: torch.device, world_size: int) -> str:
    """``nccl`` when every rank has a GPU of its own; ``gloo`` on CPUs and when ranks share GPUs (several
    processes on one GPU keep it busier than one; NCCL refuses two ranks on one device). The ranks exchange
    only a barrier and one flag, so the backend does not matter for speed."""
    if device.type == "cuda" and world_size <= torch.cuda.device_count():
        return "nccl"
    return "gloo"
