"""#25, image-v1 stream overhead: a DrawNoise of ``counter-v1`` streams holds their paths as bytes
(``noise/paths.py``). Every draw, identity, row and stream equals what the per-stream ``CounterNoise`` objects
give, through nested EOT draws of per-image streams and several ``child`` levels, and the hot path makes no
stream object per row."""

from __future__ import annotations

import pytest
import torch

from freqpure.errors import UsageError
from freqpure.noise import (
    COUNTER_SCHEME,
    CounterNoise,
    DrawNoise,
    Purpose,
    RowRandom,
    Scope,
    _encode,
    ensemble_streams,
    eot_draws,
    identity_words,
    image_streams,
    noise_scheme_of,
)
from freqpure.noise.paths import CounterRows, _decode

IMAGES = [40, 7, 1234, 0, 99_999]
SALTS = [0, 3, -1, 2**17 + 5, 2**40, -(2**63), 2**63 - 1]  # small, negative and wide encodings


def _objects(seed: int, paths: list[tuple[int, ...]]) -> list[CounterNoise]:
    return [CounterNoise(seed, p) for p in paths]


def _per_leaf(leaves: list[CounterNoise], key: int, like: torch.Tensor) -> torch.Tensor:
    """Each stream asked on its own (``CounterNoise.__call__``, its own identity): the reference numbers."""
    m = like.shape[0] // len(leaves)
    return torch.cat([s(key, like[:m]) for s in leaves])


class _Own(CounterNoise):
    """A CounterNoise subclass: a DrawNoise of these keeps one object per stream (the path before #25)."""

    __slots__ = ()


def test_the_path_encoding_reads_back() -> None:
    for path in [(), (5,), tuple(SALTS), (0, -(2**63), 255, 256, -129)]:
        assert _decode(_encode(path)) == path


def test_eot_draws_of_image_streams_through_rounds_equal_each_stream_objects_draws() -> None:
    eot, call = 3, 4
    root = image_streams(11, IMAGES, Purpose.ATTACK, 2)
    nested = eot_draws(root, call, eot)  # [eot, B] without one object per stream
    assert nested._fast is not None and nested._fast.shape == (eot, len(IMAGES)) and len(nested) == eot
    base = [(int(Scope.IMAGE), i, int(Purpose.ATTACK), 2, call, k) for k in range(eot) for i in IMAGES]
    like = torch.empty(eot * len(IMAGES) * 2, 3, 4, 4)
    noise, paths = nested, base
    for salt in SALTS:  # several child levels, as rounds below an EOT draw (and wide salts)
        noise, paths = noise.child(salt), [(*p, salt) for p in paths]
        leaves = _objects(11, paths)
        assert torch.equal(noise(9, like), _per_leaf(leaves, 9, like))
        assert torch.equal(noise._identity_words(like.device), identity_words([s.identity for s in leaves]))
    assert noise.leaves == leaves and noise.streams == noise.streams  # made on demand, cached
    assert [d.leaves for d in noise.streams] == [leaves[k * len(IMAGES) : (k + 1) * len(IMAGES)] for k in range(eot)]
    assert noise_scheme_of(noise) == noise_scheme_of(noise.streams[0]) == COUNTER_SCHEME
    picked = noise.select(1, 3)
    assert picked._fast.shape == (2, len(IMAGES)) and picked.leaves == leaves[len(IMAGES) :]
    assert torch.equal(picked(9, like[: 4 * len(IMAGES)]), _per_leaf(leaves[len(IMAGES) :], 9, like[: 4 * len(IMAGES)]))
    assert noise.select(-1, 99).leaves == leaves[-len(IMAGES) :]
    with pytest.raises(UsageError, match="at least one stream"):
        noise.select(2, 1)
    with pytest.raises(UsageError, match="64 bits"):
        noise.child(2**63)
    assert repr(noise).startswith(f"DrawNoise({eot} draws, first=DrawNoise({len(IMAGES)} draws, first=CounterNoise(")


def test_rows_and_ensemble_rows_are_each_streams_children_and_draw_the_same() -> None:
    eot, n = 2, 2 * len(IMAGES)
    nested = eot_draws(image_streams(3, IMAGES, Purpose.ATTACK), 1, eot)
    leaves = _objects(3, [(int(Scope.IMAGE), i, int(Purpose.ATTACK), 0, 1, k) for k in range(eot) for i in IMAGES])
    assert nested.rows(n) == [r for s in leaves for r in s.rows(1)]
    assert nested.rows(2 * n) == [r for s in leaves for r in s.rows(2)]
    with pytest.raises(UsageError, match="batch of 7 is not a multiple of the 2 draws"):
        nested.rows(7)
    with pytest.raises(UsageError, match="batch of 3 is not a multiple of the 5 draws"):
        nested.rows(6)
    rows = ensemble_streams(nested, n, 3)  # what PurifiedClassifier.purify slices into chunks
    expected = [s.child(e) for e in range(3) for s in [r for s in leaves for r in s.rows(1)]]
    assert isinstance(rows, CounterRows) and len(rows) == len(expected) and rows == expected
    assert rows[4] == expected[4] and rows[-1] == expected[-1] and list(rows[2:9]) == expected[2:9]
    like = torch.empty(7, 3, 4, 4)
    for start in range(0, len(rows), 7):  # chunks of a PurifiedClassifier, then its rounds
        chunk = DrawNoise(rows[start : start + 7])
        assert chunk._fast is not None and chunk._fast.shape == (len(expected[start : start + 7]),)
        part = like[: len(chunk)]
        for r in range(3):
            ref = [s.child(r) for s in expected[start : start + 7]]
            assert torch.equal(chunk.child(r)(r + 10, part), _per_leaf(ref, r + 10, part))
    with pytest.raises(UsageError, match="at least one stream"):
        DrawNoise(rows[5:5])


def test_the_hot_path_makes_no_stream_object_per_row(monkeypatch) -> None:
    made = [0]
    for name in ("_of_prefix", "_fresh"):
        inner = getattr(CounterNoise, name)
        monkeypatch.setattr(CounterNoise, name, lambda *a, _inner=inner: made.__setitem__(0, made[0] + 1) or _inner(*a))
    root = image_streams(1, IMAGES, Purpose.ATTACK)
    made[0] = 0
    like = torch.empty(2 * len(IMAGES), 3, 4, 4)
    for call in range(3):  # EOT calls: draws, rows, chunks, rounds, steps
        streams = ensemble_streams(eot_draws(root, call, 2), 2 * len(IMAGES), 1)
        noise = DrawNoise(streams[: len(streams)])
        for r in range(2):
            round_noise = noise.child(r)
            for step in range(3):
                round_noise(step, like)
    assert made[0] == 0


def test_mixed_or_unevenly_nested_streams_keep_their_objects() -> None:
    own = DrawNoise([_Own(5, (i,)) for i in range(3)])
    assert own._fast is None and own._kind == "mixed"  # each stream asked
    like = torch.empty(6, 2)
    assert torch.equal(own.child(2)(1, like), _per_leaf([_Own(5, (i, 2)) for i in range(3)], 1, like))
    flat = DrawNoise([CounterNoise(5, (i,)) for i in range(3)])
    assert torch.equal(flat.child(2)(1, like), own.child(2)(1, like))  # the same numbers either way
    uneven = DrawNoise([DrawNoise([CounterNoise(1, (0,)), CounterNoise(1, (1,))]), DrawNoise([CounterNoise(1, (2,))])])
    assert uneven._fast is None and len(uneven.leaves) == 2  # draws of unequal size: each draw is asked
    mixed = DrawNoise([flat, CounterNoise(1)])
    assert mixed._fast is None and mixed.leaves == [flat, CounterNoise(1)]
    assert noise_scheme_of(DrawNoise([flat, flat])) == COUNTER_SCHEME  # nested: its first draw's streams'


def test_row_random_over_paths_draws_each_rows_stream() -> None:
    streams = image_streams(2, IMAGES, Purpose.START)
    objects = DrawNoise([_Own(2, s.full_path[1:]) for s in streams.leaves])  # the per-stream reference
    assert objects._fast is None
    like = torch.empty(1)
    fast, ref = RowRandom(image_streams(2, IMAGES, Purpose.START)), RowRandom(objects)
    for _ in range(2):
        assert torch.equal(fast.random((len(IMAGES), 6), like), ref.random((len(IMAGES), 6), like))
        assert torch.equal(fast.standard_normal((len(IMAGES), 3), like), ref.standard_normal((len(IMAGES), 3), like))
