"""The noise streams of freqpure: addressed by path, replayable, both schemes.

* ``blake2b-philox-v2`` (:data:`NOISE_SCHEME`, the default; every recorded run so far): :class:`StepNoise`
  and :class:`DrawNoise`, numpy Philox-4x64 keyed by the BLAKE2b hash of the stream's path (end of file).
* ``counter-v1`` (:data:`~freqpure.noise.counter.COUNTER_SCHEME`): :class:`CounterNoise`, counter-based
  Gaussian noise made where the tensor lives (:mod:`freqpure.noise.counter`).

:class:`CounterNoise` has :class:`StepNoise`'s interface and addressing (a stream is its path ``(seed, salt1,
salt2, ...)``, a draw is ``noise(key, like)``; ``child``, ``rows``, ``rng``, ``int_seed``). Its *identity* is
the 128-bit BLAKE2b hash of the prefix-free encoding of its path (the same injective encoding as
``blake2b-philox-v2``, another domain tag), split into four 32-bit words ``(k0, k1, h2, h3)``. Element ``e``
of draw ``key`` (``0 <= key < 2**32``) is normal number ``e mod 4`` of the Philox block with key ``(k0, k1)``
and counter ``(e // 4, key, h2, h3)``; the four 32-bit outputs of a block give two Box–Muller pairs. Within a
stream every (key, block) is a distinct counter, so a distinct Philox output (the cipher is a bijection for a
fixed key); two streams share a block only if all 128 identity bits agree (a BLAKE2b-128 collision). A draw's
element ``e`` does not depend on the draw's shape beyond ``e``: the rows of a batch drawn with one stream per
row (:func:`~freqpure.noise.counter.counter_normals` with one identity per row) do not depend on the batch size.

:func:`make_noise` builds the root stream of either scheme; :class:`NoiseSource` is what every consumer
(samplers, purifiers, attacks) takes.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from freqpure.errors import UsageError
from freqpure.noise.counter import COUNTER_SCHEME, counter_normals, identity_words

__all__ = ["NOISE_SCHEME", "StepNoise", "DrawNoise", "derive_key", "path_rng", "NoiseSource",
           "NOISE_SCHEMES", "CounterNoise", "make_noise", "noise_scheme_of", "check_noise_scheme"]

# Name of the scheme that derives noise streams from seeds (StepNoise paths and draws, the evaluation's
# per-batch streams). Written into every results file; change it whenever the derivation changes, so
# old results say which scheme made them ("linear-v1": the earlier linear seed mixing, whose streams
# collided, e.g. StepNoise(0).child(31) == StepNoise(17).child(0)).
NOISE_SCHEME = "blake2b-philox-v2"

_DOMAIN = b"freqpure/noise/counter-v1\x00"


NOISE_SCHEMES = ("blake2b-philox-v2", COUNTER_SCHEME)  # the schemes this freqpure draws with


@runtime_checkable
class NoiseSource(Protocol):
    """What a stochastic model takes as ``noise``: ``noise(key, like) -> Tensor`` (standard normal, shaped like
    ``like``, the same for the same key), ``child(salt)`` (an independent source) and ``rows(n)`` (one stream
    per row of an ``n``-row batch). :class:`StepNoise`, :class:`CounterNoise` and :class:`DrawNoise` are noise
    sources."""

    def __call__(self, key: int, like: Tensor) -> Tensor: ...

    def child(self, salt: int) -> NoiseSource: ...

    def rows(self, n: int) -> list: ...


def check_noise_scheme(scheme: object) -> str:
    """``scheme`` if this freqpure can draw with it; a :class:`UsageError` listing the schemes otherwise."""
    if scheme not in NOISE_SCHEMES:
        raise UsageError(f"noise_scheme must be one of {', '.join(NOISE_SCHEMES)}, got {scheme!r}")
    return str(scheme)


# ---------------------------------------------------------------------------------------------
# The stream
# ---------------------------------------------------------------------------------------------
class _PathStream:
    """What the streams of both schemes share: a stream is its path ``(seed, salt1, salt2, ...)``
    (prefix-free encoded once, :func:`_encode`); ``child(salt)`` extends it, ``rows(n)`` gives one child per
    row; ``rng()`` and ``int_seed()`` derive non-Gaussian draws from it under the scheme's tag."""

    __slots__ = ("seed", "path", "_prefix")
    scheme = ""
    _TAG = b""  # domain of rng() / int_seed(): b"" for blake2b-philox-v2, b"counter-v1/" for counter-v1

    def __init__(self, seed: int, path: Sequence[int] = ()) -> None:
        self.seed = int(seed)
        self.path = tuple(int(p) for p in path)
        self._prefix = _encode(self.full_path)

    @property
    def full_path(self) -> tuple[int, ...]:
        """``(seed, *path)``: the stream's identity."""
        return (self.seed, *self.path)

    def child(self, salt: int):
        """An independent stream (e.g. per round, per EOT draw or per image): path ``path + (salt,)``."""
        salt = int(salt)
        if not -_SALT_LIMIT <= salt < _SALT_LIMIT:
            raise UsageError(f"noise salt must fit in 64 bits, got {salt}")
        child = object.__new__(type(self))  # the path's encoding extends the parent's (no re-encoding)
        child.seed, child.path, child._prefix = self.seed, (*self.path, salt), self._prefix + _encode_int(salt)
        child._fresh()
        return child

    def _fresh(self) -> None:
        """Reset a new child's per-stream caches (none here)."""

    def rows(self, n: int) -> list:
        """One stream per row of an ``n``-row batch (``child(i)`` for row ``i``)."""
        return [self.child(i) for i in range(n)]

    def rng(self) -> np.random.Generator:
        """A numpy generator for this stream's non-Gaussian draws (e.g. random starts)."""
        return path_rng(self._TAG + b"rng", self.full_path)

    def int_seed(self, bits: int = 63) -> int:
        """A ``bits``-bit integer seed for libraries that take one (e.g. AutoAttack)."""
        return derive_key(self._TAG + b"int", self.full_path) % (2**bits)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _PathStream) and other.scheme == self.scheme and other.full_path == self.full_path

    def __hash__(self) -> int:
        return hash((self.scheme, self.full_path))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed}" + (f", path={self.path})" if self.path else ")")


class CounterNoise(_PathStream):
    """Deterministic Gaussian noise (scheme ``counter-v1``) addressed like :class:`StepNoise`.

    ``CounterNoise(seed)(k, x)`` is a standard-normal tensor shaped like ``x``, made on ``x``'s device
    in float32 and cast to ``x``'s dtype; the same ``seed``, path and ``k`` give the same numbers in
    any call order and (up to float rounding) on any device. ``child(salt)`` is an independent
    stream; ``rows(n)`` one stream per row. Draw keys are integers in ``0..2**32-1``.
    """

    __slots__ = ("_identity",)
    scheme = COUNTER_SCHEME
    _TAG = b"counter-v1/"

    def __init__(self, seed: int, path: Sequence[int] = ()) -> None:
        super().__init__(seed, path)
        self._identity: int | None = None

    def _fresh(self) -> None:
        self._identity = None

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


def make_noise(seed: int, path: Sequence[int] = (), scheme: str | None = None):
    """The root stream ``(seed, *path)`` of noise scheme ``scheme`` (default: the library's
    :data:`NOISE_SCHEME`): a :class:`StepNoise` or a :class:`CounterNoise`."""

    scheme = check_noise_scheme(NOISE_SCHEME if scheme is None else scheme)
    return CounterNoise(seed, path) if scheme == COUNTER_SCHEME else StepNoise(seed, path)


def noise_scheme_of(noise: object) -> str:
    """The scheme a noise source draws with (a :class:`DrawNoise` by its streams)."""

    streams = getattr(noise, "streams", None)
    if streams:
        noise = streams[0]
    return COUNTER_SCHEME if isinstance(noise, CounterNoise) else NOISE_SCHEME


# ---------------------------------------------------------------------------------------------
# Scheme blake2b-philox-v2 (the default): BLAKE2b-keyed numpy Philox-4x64 streams
# ---------------------------------------------------------------------------------------------
_V2_DOMAIN = b"freqpure/noise/v2\x00"
_SALT_LIMIT = 2**63
_DRAW = _V2_DOMAIN + b"draw\x00"


def _encode(values: Sequence[int]) -> bytes:
    """Prefix-free byte encoding of a sequence of ints: per value, a length byte then its signed bytes.

    Injective: two different sequences (any lengths, any signs) never give the same bytes.
    """
    return b"".join(_encode_int(int(v)) for v in values)


def _encode_int(v: int) -> bytes:
    if 0 <= v < _SMALL_N:
        return _SMALL[v]
    raw = v.to_bytes(v.bit_length() // 8 + 1, "little", signed=True)
    return bytes((len(raw),)) + raw


_SMALL_N = 1 << 17  # step keys, rounds, draws, images, batches: encoded once (same bytes as below)
_SMALL = [bytes((len(r),)) + r for r in (v.to_bytes(v.bit_length() // 8 + 1, "little", signed=True)
                                         for v in range(_SMALL_N))]


def derive_key(tag: bytes, path: Sequence[int]) -> int:
    """The 128-bit key of ``path`` (a sequence of ints) for purpose ``tag``: BLAKE2b-128 of its encoding."""
    digest = hashlib.blake2b(_V2_DOMAIN + tag + b"\x00" + _encode(path), digest_size=16).digest()
    return int.from_bytes(digest, "little")


def path_rng(tag: bytes, path: Sequence[int]) -> np.random.Generator:
    """A numpy generator (Philox-4x64, 128-bit key :func:`derive_key`) for ``path``: independent per path."""
    return np.random.Generator(np.random.Philox(key=derive_key(tag, path)))


_LOCAL = threading.local()  # one reusable numpy Philox generator per thread
_M64 = 2**64 - 1


def _philox_normals(key: int, out: np.ndarray) -> None:
    """Fill float32 ``out`` with ``Generator(Philox(key=key)).standard_normal(out.shape, dtype=float32)``.

    Bit-identical to building that generator, without its cost: a fresh ``Philox(key=...)`` first seeds
    itself from OS entropy before the key replaces it, so one generator per thread is re-keyed instead.
    """
    gen = getattr(_LOCAL, "gen", None)
    if gen is None:
        gen = _LOCAL.gen = np.random.Generator(np.random.Philox(key=0))
    gen.bit_generator.state = {
        "bit_generator": "Philox",
        "state": {"counter": np.zeros(4, dtype=np.uint64),
                  "key": np.array([key & _M64, (key >> 64) & _M64], dtype=np.uint64)},
        "buffer": np.zeros(4, dtype=np.uint64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0,
    }
    gen.standard_normal(out=out, dtype=np.float32)


def _host_buffer(shape: tuple[int, ...], device: torch.device) -> Tensor:
    """An uninitialised float32 host tensor for draws bound for ``device`` (pinned when that is a GPU)."""
    return torch.empty(shape, dtype=torch.float32, pin_memory=device.type == "cuda")


def _to_like(z: Tensor, like: Tensor) -> Tensor:
    """Host draws ``z`` → ``like``'s device and dtype (a non-blocking copy from pinned memory on a GPU)."""
    if like.device.type == "cpu":
        return z.to(dtype=like.dtype)
    return z.to(device=like.device, non_blocking=True).to(like.dtype)


class StepNoise(_PathStream):
    """Deterministic Gaussian noise addressed by an integer key: ``noise(key, like)``.

    ``StepNoise(seed)(k, x)`` returns the same standard-normal tensor shaped like ``x`` every time it
    is called with the same ``seed`` and ``k``, independent of call order, device and dtype (draws are
    made in float32 on the CPU and then moved). ``child(salt)`` is an independent stream; a stream is
    its *path* ``(seed, salt1, salt2, ...)``.

    Derivation (scheme :data:`NOISE_SCHEME` = ``"blake2b-philox-v2"``): the draw ``k`` of the stream
    with path ``p`` comes from a Philox-4x64 generator keyed by the 128-bit BLAKE2b hash of the
    prefix-free encoding of ``p + (k,)``. Why a hash and not ``numpy.random.SeedSequence``: the
    encoding is injective, so different (path, key) pairs are different hash inputs by construction
    (SeedSequence packs spawn keys into 32-bit words, so ``(5, 2**32 + 3)`` and ``(5, 3, 1)`` are the
    same input), streams are addressable without state or enumeration, and a collision needs a
    128-bit hash collision (about 2**-128 per pair; a run draws fewer than 2**40 times). It also
    replaces ``torch.Generator`` seeding, which on the CPU keeps only the low 32 bits of a seed, so
    that two of a run's millions of streams would share a seed by the birthday bound.

    The rows of ``x`` are drawn together from one stream: row ``i`` of a batch depends on the batch
    size. Where batches are chunked, address rows separately (see
    :class:`DrawNoise` and :meth:`rows`).
    """

    __slots__ = ()

    def key(self, key: int) -> int:
        """The 128-bit Philox key of draw ``key`` of this stream (:func:`derive_key` of ``(*full_path, key)``)."""
        message = _DRAW + self._prefix + _encode_int(int(key))
        return int.from_bytes(hashlib.blake2b(message, digest_size=16).digest(), "little")

    scheme = NOISE_SCHEME

    def __call__(self, key: int, like: Tensor) -> Tensor:
        buf = _host_buffer(tuple(like.shape), like.device)
        _philox_normals(self.key(key), buf.numpy())
        return _to_like(buf, like)


class DrawNoise:
    """Noise for a draw-major batch ``[K·B, ...]``: draw ``k`` takes its slice from its own stream.

    A :class:`NoiseSource` (``noise(key, like)``, ``child(salt)``, ``rows(n)``), so any purifier
    accepts it. With one stream per row (``DrawNoise(noise.rows(n))``) every row has its own draws,
    so splitting the batch into chunks of any size never changes them. A draw may itself be a
    :class:`DrawNoise` (e.g. EOT draws of per-image streams, :func:`~freqpure.noise.image_streams`): when every
    draw holds equally many streams, their rows are drawn together as one flat list (the same numbers as
    asking each draw, in one call).
    """

    def __init__(self, streams: Sequence[NoiseSource]) -> None:
        if not streams:
            raise UsageError("DrawNoise needs at least one stream")
        self.streams = list(streams)
        inner = {len(s.leaves) if isinstance(s, DrawNoise) else -1 for s in self.streams}
        nested = len(inner) == 1 and inner != {-1}
        # the single streams behind the draws (draw-major): a draw's share splits the same way nested or flat
        self.leaves = [leaf for s in self.streams for leaf in s.leaves] if nested else self.streams

    @classmethod
    def from_seed(cls, seed: int, draws: int, scheme: str | None = None) -> DrawNoise:
        """``draws`` independent streams derived from ``seed`` (noise scheme ``scheme``; default
        :data:`NOISE_SCHEME`)."""
        base = make_noise(seed, (), scheme)
        return cls([base.child(k) for k in range(draws)])

    def __len__(self) -> int:
        return len(self.streams)

    def __call__(self, key: int, like: Tensor) -> Tensor:
        """All streams' draws ``key`` in one call: ``[K·m, ...]`` shaped like ``like`` (stream ``k`` fills rows
        ``k·m .. (k+1)·m − 1``). Counter streams draw on ``like``'s device in one batched call; Philox streams
        fill one host buffer (pinned for a GPU) moved in one copy; the numbers are each stream's own."""
        k = len(self.leaves)
        if like.shape[0] % k:
            raise UsageError(f"batch of {like.shape[0]} is not a multiple of the {k} draws")
        part_shape = (like.shape[0] // k, *like.shape[1:])
        if self._kind == "counter":
            words = self._identity_words(like.device)
            return counter_normals(words, key, math.prod(part_shape)).reshape(like.shape).to(like.dtype)
        if self._kind == "philox":
            buf = _host_buffer((k, *part_shape), like.device)
            arr = buf.numpy()
            for i, s in enumerate(self.leaves):
                _philox_normals(s.key(key), arr[i])
            return _to_like(buf.view(like.shape), like)
        part = like[: like.shape[0] // k]
        return torch.cat([s(key, part) for s in self.leaves]) if k > 1 else self.leaves[0](key, part)

    @property
    def _kind(self) -> str:
        kinds = {type(s) for s in self.leaves}
        if kinds == {StepNoise}:
            return "philox"
        if kinds == {CounterNoise}:
            return "counter"
        return "mixed"  # subclasses with draws of their own: each stream is asked

    def _identity_words(self, device: torch.device) -> Tensor:
        """The streams' identity words ``[K, 4]`` on ``device``, made once per device."""
        cache = self.__dict__.setdefault("_words", {})
        words = cache.get(device)
        if words is None:
            words = cache[device] = identity_words([s.identity for s in self.leaves], device)
        return words

    def child(self, salt: int) -> DrawNoise:
        return DrawNoise([s.child(salt) for s in self.streams])

    def rows(self, n: int) -> list[StepNoise]:
        """One stream per row of an ``n``-row batch: stream ``k``'s rows for the ``k``-th share."""
        k = len(self.streams)
        if n % k:
            raise UsageError(f"batch of {n} is not a multiple of the {k} draws")
        return [row for s in self.streams for row in s.rows(n // k)]

    def select(self, start: int, stop: int) -> DrawNoise:
        """The streams of draws ``start..stop-1``."""
        return DrawNoise(self.streams[start:stop])

    def __repr__(self) -> str:
        return f"DrawNoise({len(self.streams)} draws, first={self.streams[0]!r})"
