"""Counter-based Gaussian noise made where the tensor lives (scheme ``counter-v1``).

:class:`CounterNoise` has :class:`~freqpure.samplers.StepNoise`'s interface and addressing (a stream is
its path ``(seed, salt1, salt2, ...)``, a draw is ``noise(key, like)``; ``child``, ``rows``, ``rng``,
``int_seed``), but its numbers come from Philox-4x32-10 (Salmon et al., SC 2011, "Parallel random
numbers: as easy as 1, 2, 3") written in torch integer ops, so a draw is made on ``like``'s device in
one batched call and is the same on every device up to float rounding (Box–Muller's log/cos/sin).

Derivation, per stream: its *identity* is the 128-bit BLAKE2b hash of the prefix-free encoding of its
path (the same injective encoding as ``blake2b-philox-v2``, another domain tag), split into four 32-bit
words ``(k0, k1, h2, h3)``. Element ``e`` of draw ``key`` (``0 <= key < 2**32``) is normal number
``e mod 4`` of the Philox block with key ``(k0, k1)`` and counter ``(e // 4, key, h2, h3)``; the four
32-bit outputs of a block give two Box–Muller pairs. Within a stream every (key, block) is a distinct
counter, so a distinct Philox output (the cipher is a bijection for a fixed key); two streams share a
block only if all 128 identity bits agree (a BLAKE2b-128 collision). A draw's element ``e`` does not
depend on the draw's shape beyond ``e``: the rows of a batch drawn with one stream per row
(:func:`counter_normals` with one identity per row) do not depend on the batch size.

:data:`COUNTER_SCHEME` names it in results files. The default scheme stays
:data:`freqpure.samplers.NOISE_SCHEME` (``blake2b-philox-v2``); :func:`make_noise` builds the root
stream of either scheme.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from freqpure.errors import UsageError

__all__ = ["COUNTER_SCHEME", "NOISE_SCHEMES", "CounterNoise", "make_noise", "noise_scheme_of", "check_noise_scheme",
           "philox4x32", "counter_normals", "identity_words"]

COUNTER_SCHEME = "counter-v1"
_DOMAIN = b"freqpure/noise/counter-v1\x00"
_MASK = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox-4x32 multipliers (Salmon et al. 2011)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments (golden ratio, sqrt(3) - 1)
_KEY_LIMIT = 2**32


NOISE_SCHEMES = ("blake2b-philox-v2", COUNTER_SCHEME)  # the schemes this freqpure draws with


def check_noise_scheme(scheme: object) -> str:
    """``scheme`` if this freqpure can draw with it; a :class:`UsageError` listing the schemes otherwise."""
    if scheme not in NOISE_SCHEMES:
        raise UsageError(f"noise_scheme must be one of {', '.join(NOISE_SCHEMES)}, got {scheme!r}")
    return str(scheme)


# ---------------------------------------------------------------------------------------------
# Philox-4x32-10 and Box–Muller in torch integer ops (int64 tensors holding uint32 words)
# ---------------------------------------------------------------------------------------------
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


def counter_normals(identity: Tensor, key: int, count: int) -> Tensor:
    """Standard normals ``[R, count]`` (float32, on ``identity``'s device): row ``r`` is draw ``key`` of the
    stream with identity words ``identity[r]`` (``[R, 4]`` int64 uint32 words, see :func:`identity_words`)."""
    key = int(key)
    if not 0 <= key < _KEY_LIMIT:
        raise UsageError(f"noise scheme {COUNTER_SCHEME} takes draw keys in 0..2**32-1, got {key}")
    blocks = (count + 3) // 4
    if blocks > _KEY_LIMIT:
        raise UsageError(f"a {COUNTER_SCHEME} draw holds at most 2**34 numbers, asked for {count}")
    device = identity.device
    c0 = torch.arange(blocks, device=device, dtype=torch.int64)[None, :]
    ident = identity.to(torch.int64)
    k0, k1, h2, h3 = (ident[:, i : i + 1] for i in range(4))
    c1 = torch.full_like(c0, key)
    w0, w1, w2, w3 = philox4x32(c0, c1, h2.expand(-1, blocks), h3.expand(-1, blocks), k0, k1)
    z0, z1 = _box_muller(w0, w1)
    z2, z3 = _box_muller(w2, w3)
    out = torch.stack((z0, z1, z2, z3), dim=-1).reshape(identity.shape[0], blocks * 4)
    return out[:, :count]


def identity_words(identities: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
    """``[R, 4]`` int64 tensor of the 32-bit words (little-endian) of 128-bit stream identities, on ``device``."""
    words = np.array([[(v >> (32 * i)) & _MASK for i in range(4)] for v in identities], dtype=np.int64)
    host = torch.from_numpy(words.reshape(len(identities), 4))
    device = torch.device(device)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


# ---------------------------------------------------------------------------------------------
# The stream
# ---------------------------------------------------------------------------------------------
class CounterNoise:
    """Deterministic Gaussian noise (scheme ``counter-v1``) addressed like :class:`~freqpure.samplers.StepNoise`.

    ``CounterNoise(seed)(k, x)`` is a standard-normal tensor shaped like ``x``, made on ``x``'s device
    in float32 and cast to ``x``'s dtype; the same ``seed``, path and ``k`` give the same numbers in
    any call order and (up to float rounding) on any device. ``child(salt)`` is an independent
    stream; ``rows(n)`` one stream per row. Draw keys are integers in ``0..2**32-1``.
    """

    __slots__ = ("seed", "path", "_prefix", "_identity")
    scheme = COUNTER_SCHEME

    def __init__(self, seed: int, path: Sequence[int] = ()) -> None:
        from freqpure.samplers import _encode

        self.seed = int(seed)
        self.path = tuple(int(p) for p in path)
        self._prefix = _encode(self.full_path)
        self._identity: int | None = None

    @property
    def full_path(self) -> tuple[int, ...]:
        """``(seed, *path)``: the stream's identity."""
        return (self.seed, *self.path)

    @property
    def identity(self) -> int:
        """The stream's 128-bit identity: BLAKE2b-128 of its path's prefix-free encoding (domain ``counter-v1``)."""
        if self._identity is None:
            digest = hashlib.blake2b(_DOMAIN + self._prefix, digest_size=16).digest()
            self._identity = int.from_bytes(digest, "little")
        return self._identity

    def __call__(self, key: int, like: Tensor) -> Tensor:
        words = identity_words([self.identity], like.device)
        z = counter_normals(words, key, like.numel())
        return z.reshape(like.shape).to(like.dtype)

    def child(self, salt: int) -> CounterNoise:
        """An independent stream: path ``path + (salt,)``."""
        from freqpure.samplers import _SALT_LIMIT, _encode_int

        salt = int(salt)
        if not -_SALT_LIMIT <= salt < _SALT_LIMIT:
            raise UsageError(f"noise salt must fit in 64 bits, got {salt}")
        child = object.__new__(CounterNoise)
        child.seed, child.path = self.seed, (*self.path, salt)
        child._prefix, child._identity = self._prefix + _encode_int(salt), None
        return child

    def rows(self, n: int) -> list[CounterNoise]:
        """One stream per row of an ``n``-row batch (``child(i)`` for row ``i``)."""
        return [self.child(i) for i in range(n)]

    def rng(self) -> np.random.Generator:
        """A numpy generator for this stream's non-Gaussian draws (e.g. random starts)."""
        from freqpure.samplers import path_rng

        return path_rng(b"counter-v1/rng", self.full_path)

    def int_seed(self, bits: int = 63) -> int:
        """A ``bits``-bit integer seed for libraries that take one (e.g. AutoAttack)."""
        from freqpure.samplers import derive_key

        return derive_key(b"counter-v1/int", self.full_path) % (2**bits)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CounterNoise) and other.full_path == self.full_path

    def __hash__(self) -> int:
        return hash((COUNTER_SCHEME, self.full_path))

    def __repr__(self) -> str:
        return f"CounterNoise(seed={self.seed}" + (f", path={self.path})" if self.path else ")")


def make_noise(seed: int, path: Sequence[int] = (), scheme: str | None = None):
    """The root stream ``(seed, *path)`` of noise scheme ``scheme`` (default: the library's
    :data:`~freqpure.samplers.NOISE_SCHEME`): a :class:`~freqpure.samplers.StepNoise` or a :class:`CounterNoise`."""
    from freqpure.samplers import NOISE_SCHEME, StepNoise

    scheme = check_noise_scheme(NOISE_SCHEME if scheme is None else scheme)
    return CounterNoise(seed, path) if scheme == COUNTER_SCHEME else StepNoise(seed, path)


def noise_scheme_of(noise: object) -> str:
    """The scheme a noise source draws with (a :class:`~freqpure.samplers.DrawNoise` by its streams)."""
    from freqpure.samplers import NOISE_SCHEME

    streams = getattr(noise, "streams", None)
    if streams:
        noise = streams[0]
    return COUNTER_SCHEME if isinstance(noise, CounterNoise) else NOISE_SCHEME
