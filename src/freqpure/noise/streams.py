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
from freqpure.noise.paths import _SALT_LIMIT, CounterLeaves, CounterRows, _decode, _encode, _encode_int
from freqpure.noise.paths import COUNTER_DOMAIN as _DOMAIN

__all__ = ["NOISE_SCHEME", "StepNoise", "DrawNoise", "derive_key", "path_rng", "NoiseSource",
           "NOISE_SCHEMES", "CounterNoise", "make_noise", "noise_scheme_of", "check_noise_scheme"]

# Name of the scheme that derives noise streams from seeds (StepNoise paths and draws, the evaluation's
# per-batch streams). Written into every results file; change it whenever the derivation changes, so
# old results say which scheme made them ("linear-v1": the earlier linear seed mixing, whose streams
# collided, e.g. StepNoise(0).child(31) == StepNoise(17).child(0)).
NOISE_SCHEME = "blake2b-philox-v2"

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

    @classmethod
    def _of_prefix(cls, prefix: bytes) -> CounterNoise:
        """The stream whose path encodes to ``prefix``."""
        stream = object.__new__(cls)
        stream.seed, *path = _decode(prefix)
        stream.path, stream._prefix, stream._identity = tuple(path), prefix, None
        return stream

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

    while getattr(noise, "_fast", None) is None and getattr(noise, "streams", None):
        noise = noise.streams[0]  # its first stream's (its first draw's first stream's, when nested)
    counter = isinstance(noise, CounterNoise) or getattr(noise, "_fast", None) is not None
    return COUNTER_SCHEME if counter else NOISE_SCHEME


# ---------------------------------------------------------------------------------------------
# Scheme blake2b-philox-v2 (the default): BLAKE2b-keyed numpy Philox-4x64 streams
# ---------------------------------------------------------------------------------------------
_V2_DOMAIN = b"freqpure/noise/v2\x00"
_DRAW = _V2_DOMAIN + b"draw\x00"


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

    ``counter-v1`` streams (plain :class:`CounterNoise`, or draws that are such DrawNoises, nested alike) are
    held as their paths (:class:`~freqpure.noise.paths.CounterLeaves`): ``child``, ``select``, the draw and
    :func:`~freqpure.noise.ensemble_streams` make no Python object per stream; :attr:`streams`, :attr:`leaves`
    and :meth:`rows` make the stream objects when asked (the same streams).
    """

    def __init__(self, streams: Sequence[NoiseSource]) -> None:
        rows = isinstance(streams, CounterRows)
        if not rows:
            streams = list(streams)
        if not streams:
            raise UsageError("DrawNoise needs at least one stream")
        self._fast = streams._fast if rows else _counter_leaves(streams)
        self._streams = None if rows else streams
        self._leaves = None
        if self._fast is None:
            inner = {len(s.leaves) if isinstance(s, DrawNoise) else -1 for s in streams}
            nested = len(inner) == 1 and inner != {-1}
            # the single streams behind the draws (draw-major): a draw's share splits the same way nested or flat
            self._leaves = [leaf for s in streams for leaf in s.leaves] if nested else streams

    @staticmethod
    def _of(fast: CounterLeaves) -> DrawNoise:
        """The DrawNoise of the counter streams ``fast`` (no stream objects)."""
        noise = object.__new__(DrawNoise)
        noise._fast, noise._streams, noise._leaves = fast, None, None
        return noise

    @property
    def streams(self) -> list:
        """The draws' streams (one :class:`CounterNoise`, :class:`StepNoise` or :class:`DrawNoise` each)."""
        if self._streams is None:
            fast = self._fast
            if len(fast.shape) == 1:
                self._streams = [CounterNoise._of_prefix(p) for p in fast.prefixes]
            else:
                self._streams = [DrawNoise._of(fast.draw(k)) for k in range(fast.shape[0])]
        return self._streams

    @property
    def leaves(self) -> list:
        """The single streams behind the draws (draw-major; the draws themselves unless nested alike)."""
        if self._leaves is None:
            if len(self._fast.shape) == 1:
                self._leaves = self.streams
            elif self._streams is not None:
                self._leaves = [leaf for s in self._streams for leaf in s.leaves]
            else:
                self._leaves = [CounterNoise._of_prefix(p) for p in self._fast.prefixes]
        return self._leaves

    @classmethod
    def from_seed(cls, seed: int, draws: int, scheme: str | None = None) -> DrawNoise:
        """``draws`` independent streams derived from ``seed`` (noise scheme ``scheme``; default
        :data:`NOISE_SCHEME`)."""
        base = make_noise(seed, (), scheme)
        return cls([base.child(k) for k in range(draws)])

    def __len__(self) -> int:
        return self._fast.shape[0] if self._fast is not None else len(self._streams)

    def __call__(self, key: int, like: Tensor) -> Tensor:
        """All streams' draws ``key`` in one call: ``[K·m, ...]`` shaped like ``like`` (stream ``k`` fills rows
        ``k·m .. (k+1)·m − 1``). Counter streams draw on ``like``'s device in one batched call; Philox streams
        fill one host buffer (pinned for a GPU) moved in one copy; the numbers are each stream's own."""
        k = len(self._fast.prefixes) if self._fast is not None else len(self._leaves)
        if like.shape[0] % k:
            raise UsageError(f"batch of {like.shape[0]} is not a multiple of the {k} draws")
        part_shape = (like.shape[0] // k, *like.shape[1:])
        if self._kind == "counter":
            words = self._identity_words(like.device)
            return counter_normals(words, key, math.prod(part_shape)).reshape(like.shape).to(like.dtype)
        if self._kind == "philox":
            buf = _host_buffer((k, *part_shape), like.device)
            arr = buf.numpy()
            for i, s in enumerate(self._leaves):
                _philox_normals(s.key(key), arr[i])
            return _to_like(buf.view(like.shape), like)
        part = like[: like.shape[0] // k]
        return torch.cat([s(key, part) for s in self._leaves]) if k > 1 else self._leaves[0](key, part)

    @property
    def _kind(self) -> str:
        if self._fast is not None:
            return "counter"
        kinds = {type(s) for s in self._leaves}
        if kinds == {StepNoise}:
            return "philox"
        if kinds == {CounterNoise}:
            return "counter"
        return "mixed"  # subclasses with draws of their own: each stream is asked

    def _identity_words(self, device: torch.device) -> Tensor:
        """The streams' identity words ``[K, 4]`` on ``device``, made once per device."""
        if self._fast is not None:
            return self._fast.words(device)
        cache = self.__dict__.setdefault("_words", {})
        words = cache.get(device)
        if words is None:
            words = cache[device] = identity_words([s.identity for s in self._leaves], device)
        return words

    def child(self, salt: int) -> DrawNoise:
        if self._fast is not None:
            return DrawNoise._of(self._fast.child(salt))
        return DrawNoise([s.child(salt) for s in self._streams])

    def rows(self, n: int) -> list[StepNoise]:
        """One stream per row of an ``n``-row batch: stream ``k``'s rows for the ``k``-th share."""
        if self._fast is not None:
            return [CounterNoise._of_prefix(p) for p in self._fast.rows(n)]
        k = len(self._streams)
        if n % k:
            raise UsageError(f"batch of {n} is not a multiple of the {k} draws")
        return [row for s in self._streams for row in s.rows(n // k)]

    def select(self, start: int, stop: int) -> DrawNoise:
        """The streams of draws ``start..stop-1``."""
        if self._fast is None:
            return DrawNoise(self._streams[start:stop])
        fast = self._fast.select(start, stop)
        if fast is None:
            raise UsageError("DrawNoise needs at least one stream")
        return DrawNoise._of(fast)

    def __repr__(self) -> str:
        return f"DrawNoise({len(self)} draws, first={self.select(0, 1).streams[0]!r})"


def _counter_leaves(streams: list) -> CounterLeaves | None:
    """``streams`` as paths if they are all plain :class:`CounterNoise`, or all DrawNoises of such, nested alike."""
    first = streams[0]
    if type(first) is CounterNoise:
        if all(type(s) is CounterNoise for s in streams):
            return CounterLeaves([s._prefix for s in streams], (len(streams),))
    elif isinstance(first, DrawNoise) and first._fast is not None:
        shape = first._fast.shape
        if all(isinstance(s, DrawNoise) and s._fast is not None and s._fast.shape == shape for s in streams):
            return CounterLeaves([p for s in streams for p in s._fast.prefixes], (len(streams), *shape))
    return None
