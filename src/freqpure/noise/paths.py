"""Stream paths as bytes: the injective path encoding of both schemes, and sets of ``counter-v1`` paths.

A stream is its path ``(seed, salt1, salt2, ...)``; :func:`_encode` writes it prefix-free (per value a length
byte, then its signed little-endian bytes), so a child's encoding is its parent's plus the salt's
(:func:`_encode_int`) and :func:`_decode` reads a path back.

:class:`CounterLeaves` is the ``counter-v1`` streams behind a :class:`~freqpure.noise.DrawNoise` held as
their encodings alone, with the draws' nesting (``shape``): what an ``image-v1`` batch's EOT draws, rounds and
ensemble rows are made of, thousands of streams re-derived at every model call. ``child``, ``select``, the
rows' and ensemble's paths and the identity words take one list comprehension over bytes, not a Python
object per stream; a stream's identity stays BLAKE2b-128 of :data:`COUNTER_DOMAIN` + its encoding, so every
number is the one its own :class:`~freqpure.noise.CounterNoise` draws (tests/test_noise_counter.py).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from freqpure.errors import UsageError
from freqpure.noise.counter import host_words_to

__all__ = ["COUNTER_DOMAIN", "CounterLeaves", "CounterRows"]

COUNTER_DOMAIN = b"freqpure/noise/counter-v1\x00"  # a counter-v1 identity hashes this + the path's encoding
_SALT_LIMIT = 2**63


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


def _decode(data: bytes) -> tuple[int, ...]:
    """The ints :func:`_encode` wrote into ``data``."""
    out, pos = [], 0
    while pos < len(data):
        n = data[pos]
        out.append(int.from_bytes(data[pos + 1 : pos + 1 + n], "little", signed=True))
        pos += 1 + n
    return tuple(out)


def _salt(salt: int) -> int:
    """``salt`` as an int, if it fits in 64 bits (a :class:`UsageError` otherwise)."""
    salt = int(salt)
    if not -_SALT_LIMIT <= salt < _SALT_LIMIT:
        raise UsageError(f"noise salt must fit in 64 bits, got {salt}")
    return salt


_HASHED_DOMAIN = hashlib.blake2b(COUNTER_DOMAIN, digest_size=16)


def _identities(prefixes: list[bytes]) -> bytes:
    """The paths' identities (BLAKE2b-128 of :data:`COUNTER_DOMAIN` + path encoding), 16 bytes each, joined:
    a copy of the hash state after the domain, updated with the path (the same digest, about 40% cheaper
    than a new ``blake2b(..., digest_size=16)`` per path)."""
    digests = []
    for p in prefixes:
        h = _HASHED_DOMAIN.copy()
        h.update(p)
        digests.append(h.digest())
    return b"".join(digests)


class CounterLeaves:
    """The ``counter-v1`` streams of a draw-major batch as their path encodings (``prefixes``, leaf order) and
    the draws' nesting ``shape``: ``(K,)`` for ``K`` single streams, ``(K, *inner)`` for ``K`` draws each of
    ``inner``-shaped streams (every draw alike). Immutable; identity words cached per device."""

    __slots__ = ("prefixes", "shape", "_words")

    def __init__(self, prefixes: list[bytes], shape: tuple[int, ...]) -> None:
        self.prefixes, self.shape, self._words = prefixes, shape, {}

    @property
    def group(self) -> int:
        """Streams per draw (``prod(shape[1:])``)."""
        return math.prod(self.shape[1:])

    def child(self, salt: int) -> CounterLeaves:
        """Every stream's ``child(salt)``, in the same nesting."""
        tail = _encode_int(_salt(salt))
        return CounterLeaves([p + tail for p in self.prefixes], self.shape)

    def select(self, start: int, stop: int) -> CounterLeaves | None:
        """The streams of draws ``start..stop-1`` (slice semantics; ``None`` when that is no draw)."""
        span = range(self.shape[0])[start:stop]
        if not span:
            return None
        g = self.group
        return CounterLeaves(self.prefixes[span.start * g : span.stop * g], (len(span), *self.shape[1:]))

    def draw(self, k: int) -> CounterLeaves:
        """The streams of draw ``k`` (shape ``shape[1:]``; only for nested leaves)."""
        g = self.group
        return CounterLeaves(self.prefixes[k * g : (k + 1) * g], self.shape[1:])

    def rows(self, n: int) -> list[bytes]:
        """The paths of ``DrawNoise.rows(n)``: every draw takes an equal share, down to the streams; stream ``s``'s
        ``m`` rows are its ``child(0..m-1)`` (leaf-major)."""
        m = n
        for g in self.shape:
            if m % g:
                raise UsageError(f"batch of {m} is not a multiple of the {g} draws")
            m //= g
        tails = [_SMALL[i] for i in range(m)] if m <= _SMALL_N else [_encode_int(i) for i in range(m)]
        return [p + t for p in self.prefixes for t in tails]

    def ensemble(self, n: int, ensemble: int) -> list[bytes]:
        """The paths of :func:`~freqpure.noise.ensemble_streams`: row ``e·n + b`` is ``rows(n)[b].child(e)``."""
        rows = self.rows(n)
        return [r + _encode_int(e) for e in range(ensemble) for r in rows]

    def words(self, device: torch.device) -> Tensor:
        """The streams' identity words ``[L, 4]`` (int64 uint32 words, little-endian, as
        :func:`~freqpure.noise.identity_words` of their identities) on ``device``, hashed once."""
        words = self._words.get(device)
        if words is None:
            host = self._words.get("host")
            if host is None:
                host = np.frombuffer(_identities(self.prefixes), dtype="<u4").astype(np.int64).reshape(-1, 4)
                self._words["host"] = host = torch.from_numpy(host)
            words = self._words[device] = host_words_to(host, device)
        return words


class CounterRows(Sequence):
    """A run of ``counter-v1`` streams held as their paths (:func:`~freqpure.noise.ensemble_streams` of an
    ``image-v1`` batch): a list of streams to read (``item(prefix)`` makes one when asked), a slice of which
    :class:`~freqpure.noise.DrawNoise` takes without making any."""

    __slots__ = ("_fast", "_item")

    def __init__(self, prefixes: list[bytes], item: Callable[[bytes], object]) -> None:
        self._fast, self._item = CounterLeaves(prefixes, (len(prefixes),)), item

    def __len__(self) -> int:
        return len(self._fast.prefixes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return CounterRows(self._fast.prefixes[i], self._item)
        return self._item(self._fast.prefixes[i])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CounterRows):
            return self._fast.prefixes == other._fast.prefixes
        return isinstance(other, (list, tuple)) and list(self) == list(other)

    __hash__ = None

    def __repr__(self) -> str:
        return f"CounterRows({len(self)} streams)"
