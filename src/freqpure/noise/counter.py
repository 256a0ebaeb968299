"""Scheme ``counter-v1``'s generator: Philox-4x32-10 and Box–Muller in torch integer ops.

Philox-4x32-10 (Salmon et al., SC 2011, "Parallel random numbers: as easy as 1, 2, 3") on int64 tensors
holding uint32 words, so a draw is made on the tensor's device in one batched call, one key (stream
identity) per row, and is the same on every device up to float rounding. :func:`counter_normals` gives
standard normals, :func:`counter_uniforms` uniforms in (0, 1); the streams that use them are in
:mod:`freqpure.noise.streams` (:class:`~freqpure.noise.CounterNoise`) and
:mod:`freqpure.noise.addressing` (:class:`~freqpure.noise.RowRandom`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from freqpure.errors import UsageError

__all__ = ["COUNTER_SCHEME", "philox4x32", "counter_normals", "counter_uniforms", "identity_words",
           "host_words_to"]

COUNTER_SCHEME = "counter-v1"
_MASK = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox-4x32 multipliers (Salmon et al. 2011)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments (golden ratio, sqrt(3) - 1)
_KEY_LIMIT = 2**32


def philox4x32(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: Tensor, k1: Tensor,
               rounds: int = 10) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox-4x32 with ``rounds`` rounds on broadcastable int64 tensors of uint32 words → four word tensors.

    Round: ``(hi0, lo0) = M0·c0``, ``(hi1, lo1) = M1·c2``, ``c ← (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)``, then
    the key is bumped by the Weyl constants. In-place where it can (half the time of fresh temporaries on a CPU).
    """
    shape = torch.broadcast_shapes(c0.shape, c1.shape, c2.shape, c3.shape, k0.shape, k1.shape)
    c0, c1, c2, c3 = (c.expand(shape) for c in (c0, c1, c2, c3))  # views: only new tensors are written
    for r in range(rounds):
        if r:
            k0 = (k0 + _W0) & _MASK
            k1 = (k1 + _W1) & _MASK
        p0, p1 = c0 * _M0, c2 * _M1  # < 2**64: wraps in int64; hi/lo are recovered by shift and mask
        n0 = (p1 >> 32).bitwise_and_(_MASK).bitwise_xor_(c1).bitwise_xor_(k0)
        n2 = (p0 >> 32).bitwise_and_(_MASK).bitwise_xor_(c3).bitwise_xor_(k1)
        c0, c1, c2, c3 = n0, p1.bitwise_and_(_MASK), n2, p0.bitwise_and_(_MASK)
    return c0, c1, c2, c3


def _box_muller(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Two standard normals (float32) from two uint32 word tensors: 24-bit uniforms in (0, 1) and [0, 1)."""
    u1 = ((a >> 8).to(torch.float32) + 0.5) * (2.0**-24)
    u2 = (b >> 8).to(torch.float32) * (2.0**-24)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    theta = (2.0 * math.pi) * u2
    return radius * torch.cos(theta), radius * torch.sin(theta)


def _blocks(identity: Tensor, key: int, count: int) -> tuple[int, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """The Philox blocks of draw ``key`` for ``count`` numbers per row: ``(blocks, four [R, blocks] word tensors)``.

    Block ``j`` of row ``r`` has key ``identity[r, 0:2]`` and counter ``(j, key, identity[r, 2], identity[r, 3])``."""
    key = int(key)
    if not 0 <= key < _KEY_LIMIT:
        raise UsageError(f"noise scheme {COUNTER_SCHEME} takes draw keys in 0..2**32-1, got {key}")
    blocks = (count + 3) // 4
    if blocks > _KEY_LIMIT:
        raise UsageError(f"a {COUNTER_SCHEME} draw holds at most 2**34 numbers, asked for {count}")
    c0 = torch.arange(blocks, device=identity.device, dtype=torch.int64)[None, :]
    ident = identity.to(torch.int64)
    k0, k1, h2, h3 = (ident[:, i : i + 1] for i in range(4))
    c1 = torch.full_like(c0, key)
    return blocks, philox4x32(c0, c1, h2.expand(-1, blocks), h3.expand(-1, blocks), k0, k1)


def counter_normals(identity: Tensor, key: int, count: int) -> Tensor:
    """Standard normals ``[R, count]`` (float32, on ``identity``'s device): row ``r`` is draw ``key`` of the
    stream with identity words ``identity[r]`` (``[R, 4]`` int64 uint32 words, see :func:`identity_words`)."""
    blocks, (w0, w1, w2, w3) = _blocks(identity, key, count)
    z0, z1 = _box_muller(w0, w1)
    z2, z3 = _box_muller(w2, w3)
    out = torch.stack((z0, z1, z2, z3), dim=-1).reshape(identity.shape[0], blocks * 4)
    return out[:, :count]


def counter_uniforms(identity: Tensor, key: int, count: int) -> Tensor:
    """Uniforms in (0, 1) ``[R, count]`` (float32, 24 bits): element ``e`` of row ``r`` is ``(w >> 8 + 0.5)·2⁻²⁴``
    of word ``e mod 4`` of the block :func:`counter_normals` would use for the same ``(identity, key)`` — so
    a stream never draws normals and uniforms with one key (see :class:`~freqpure.noise.RowRandom`)."""
    blocks, words = _blocks(identity, key, count)
    u = [((w >> 8).to(torch.float32) + 0.5) * (2.0**-24) for w in words]
    return torch.stack(u, dim=-1).reshape(identity.shape[0], blocks * 4)[:, :count]


def identity_words(identities: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
    """``[R, 4]`` int64 tensor of the 32-bit words (little-endian) of 128-bit stream identities, on ``device``."""
    words = np.array([[(v >> (32 * i)) & _MASK for i in range(4)] for v in identities], dtype=np.int64)
    return host_words_to(torch.from_numpy(words.reshape(len(identities), 4)), device)


def host_words_to(host: Tensor, device: torch.device | str) -> Tensor:
    """Identity words made on the host → ``device`` (through pinned memory, without a wait, on a GPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)
