"""Noise derivation (scheme blake2b-philox-v2): addressable, replayable, and collision-free over a realistic run."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from freqpure.attacks.eot import EOTGradient
from freqpure.noise import NOISE_SCHEME, DrawNoise, Purpose, Scope, StepNoise, _encode, batch_stream, derive_key


def test_the_default_scheme_is_the_one_the_committed_records_were_drawn_with() -> None:
    """Changing the default scheme would leave every committed run (and the study) on another scheme than new
    runs: they must keep naming theirs, and the default must stay the one they name."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    schemes = {json.loads(line).get("noise_scheme") for f in root.rglob("samples.jsonl")
               for line in f.read_text().splitlines()[:1] if '"clean_correct"' in line}
    from freqpure.noise import NOISE_SCHEMES

    assert NOISE_SCHEME in schemes and schemes - {None} <= set(NOISE_SCHEMES)  # every recorded one still draws


def test_draws_replay_and_do_not_depend_on_order_device_or_dtype() -> None:
    like = torch.empty(2, 3, 4, 4)
    a = StepNoise(7).child(3)
    first = a(5, like)
    a(6, like)
    assert torch.equal(StepNoise(7, (3,))(5, like), first)  # same path, same draw, any call order
    assert not torch.equal(a(6, like), first)
    torch.testing.assert_close(a(5, like.double()), first.double())  # drawn in float32, then cast
    assert abs(first.mean().item()) < 0.3 and 0.7 < first.std().item() < 1.3


def test_the_linear_v1_collisions_are_gone() -> None:
    like = torch.empty(1, 3, 4, 4)
    # linear-v1: StepNoise(0).child(31) == StepNoise(17).child(0), batch_seed(0, 5, POOL+3) == batch_seed(0, 18, ATTACK)
    assert not torch.equal(StepNoise(0).child(31)(0, like), StepNoise(17).child(0)(0, like))
    assert batch_stream(0, 5, Purpose.POOL, 3) != batch_stream(0, 18, Purpose.ATTACK, 0)
    assert batch_stream(0, 5, Purpose.UNDEFENDED, 3) != batch_stream(0, 18, Purpose.CLEAN)
    # the eps sweep has streams of its own, never a real batch's
    assert batch_stream(0, 0, Purpose.ATTACK, 0, sweep=0) != batch_stream(0, 10_000, Purpose.ATTACK, 0)
    # torch's CPU generator keeps 32 bits of a seed; the new keys are 128-bit and use every bit of the path
    assert StepNoise(5).key(0) != StepNoise(5 + 2**32).key(0)
    assert not torch.equal(StepNoise(5)(0, like), StepNoise(5 + 2**32)(0, like))


def test_path_encoding_is_injective() -> None:
    """SeedSequence would merge (5, 2**32 + 3) and (5, 3, 1) (32-bit words); the prefix-free encoding does not."""
    paths = [(5, 2**32 + 3), (5, 3, 1), (5, 3), (5, 3, 0), (5, -3), (-5, 3), (5, 253), (5, 0, 253), (0,), (0, 0),
             (256,), (1, 0), (2**63, 1), (2**63 + 1,)]
    encoded = [_encode(p) for p in paths]
    assert len(set(encoded)) == len(paths)
    assert len({derive_key(b"draw", p) for p in paths}) == len(paths)
    with pytest.raises(ValueError, match="64 bits"):
        StepNoise(0).child(2**70)


def _run_streams(n: int = 10_000, batch: int = 8, attacks: int = 8, rounds: int = 10, eot: int = 20,
                 calls: int = 1, ensemble: int = 1, stages: int = 2, sweep_mults: int = 2,
                 sweep_samples: int = 64) -> Iterator[StepNoise]:
    """The noise streams of a realistic run, down to the round level, derived exactly as the code derives them.

    Per batch: the defence's clean and judge verdicts and examples (per image, per ensemble draw, per round),
    each attack's EOT draws (per gradient call and draw, per round), AutoAttack's pool verdicts (per stage),
    random starts and the undefended checks; plus the eps sweep's batches. Within a round the draws are keyed
    by step index, so distinct round streams mean distinct draws.
    """

    def defence_rows(stream: StepNoise, rows: int) -> Iterator[StepNoise]:  # PurifiedClassifier: image, draw
        for s in stream.rows(rows):
            for e in range(ensemble):
                base = s.child(e)
                yield from (base.child(r) for r in range(rounds))  # Purifier: round r

    def attack_draws(stream: StepNoise) -> Iterator[StepNoise]:
        oracle = EOTGradient.__new__(EOTGradient)  # the real noise_at, without a model
        oracle.root, oracle.eot, oracle.stochastic = stream, eot, True
        for c in range(calls):
            for s in oracle.noise_at(c).streams:
                yield from (s.child(r) for r in range(rounds))

    def one_batch(b: int, rows: int, sweep: int | None = None) -> Iterator[StepNoise]:
        for i in range(attacks):
            yield from attack_draws(batch_stream(0, b, Purpose.ATTACK, i, sweep=sweep))
            yield batch_stream(0, b, Purpose.START, i, sweep=sweep)
            yield from defence_rows(batch_stream(0, b, Purpose.JUDGE, i, sweep=sweep), rows)
            pool = batch_stream(0, b, Purpose.POOL, i, sweep=sweep)
            for stage in range(stages):
                yield from defence_rows(pool.child(stage), rows)
        if sweep is None:
            yield from defence_rows(batch_stream(0, b, Purpose.CLEAN), rows)
            yield from defence_rows(batch_stream(0, b, Purpose.EXAMPLE), rows)
            yield from (batch_stream(0, b, Purpose.UNDEFENDED, j) for j in range(attacks))

    batches = (n + batch - 1) // batch
    for b in range(batches):
        yield from one_batch(b, min(batch, n - b * batch))
    for m in range(sweep_mults):
        for b in range(sweep_samples // batch):
            yield from one_batch(b, batch, sweep=m)


@pytest.mark.slow
def test_no_two_streams_of_a_realistic_run_collide() -> None:
    """n = 10,000, batch 8, 8 attacks, 10 rounds, EOT 20, 2 AutoAttack stages (rand), the eps sweep: every stream's
    128-bit key differs already in its first 64 bits (equal paths would give equal keys, so paths differ too)."""
    mask = 2**64 - 1
    keys = np.fromiter((s.key(0) & mask for s in _run_streams()), dtype=np.uint64)
    assert keys.size > 4_000_000
    assert np.unique(keys).size == keys.size, "two streams of the run share a key"
    assert Scope.SWEEP != Scope.BATCH


def test_draw_noise_rows_address_each_image() -> None:
    noise = DrawNoise.from_seed(3, 2)
    rows = noise.rows(6)  # 2 draws × 3 images
    assert rows[4] == noise.streams[1].child(1)
    like = torch.empty(6, 3, 4, 4)
    per_row = DrawNoise(rows)
    whole = per_row(0, like)
    assert torch.equal(whole[2:5], DrawNoise(rows[2:5])(0, like[2:5]))  # any chunk: the same rows


def test_named_derivations_give_the_streams_of_the_inline_ones() -> None:
    """The named children in freqpure.noise (EOT draws, model calls, ensemble rows, the study's streams) are the
    paths the attacks, purifiers and study derived inline before: same paths, same draws."""
    from freqpure.noise import (
        VOTE_STREAM_OFFSET,
        call_stream,
        clean_batch_stream,
        ensemble_streams,
        eot_draws,
        vote_batch_stream,
    )

    root = batch_stream(3, 2, Purpose.ATTACK, 1)
    assert eot_draws(root, 5, 3).streams == [root.child(5).child(k) for k in range(3)]
    assert call_stream(root, 4) == root.child(4)
    assert ensemble_streams(root, 2, 3) == [s.child(e) for e in range(3) for s in root.rows(2)]
    assert clean_batch_stream(9, 4) == StepNoise(9).child(4)
    assert vote_batch_stream(9, 4) == StepNoise(9).child(VOTE_STREAM_OFFSET + 4) == StepNoise(9).child(10_004)
    with pytest.raises(ValueError, match="collide"):
        vote_batch_stream(9, VOTE_STREAM_OFFSET)
    class Model(torch.nn.Module):
        stochastic = True

        def forward(self, x, noise=None):
            return x

    oracle = EOTGradient(Model(), eot=2, seed=root)  # the oracle's draws are eot_draws'
    assert oracle.noise_at(7).streams == eot_draws(root, 7, 2).streams


def test_image_streams_are_addressed_by_image_not_batch() -> None:
    """image-v1: row r's stream is (seed, Scope.IMAGE, image, purpose, index) whatever the batch; its paths
    never meet batch-v1's (another scope)."""
    from freqpure.noise import COUNTER_SCHEME, CounterNoise, image_streams, run_stream

    roots = image_streams(5, [40, 7, 1234], Purpose.JUDGE, 2)
    assert roots.leaves == [CounterNoise(5, (int(Scope.IMAGE), i, int(Purpose.JUDGE), 2)) for i in (40, 7, 1234)]
    assert image_streams(5, [7], Purpose.JUDGE, 2).leaves[0] == roots.leaves[1]
    sweep = image_streams(5, [7], Purpose.JUDGE, 2, sweep=0).leaves[0]
    assert sweep.full_path == (5, int(Scope.IMAGE_SWEEP), 0, 7, int(Purpose.JUDGE), 2) and sweep != roots.leaves[1]
    assert run_stream("image-v1", 5, 99, [7], Purpose.JUDGE, 2).leaves == [roots.leaves[1]]
    assert run_stream(None, 5, 99, [7], Purpose.JUDGE, 2) == batch_stream(5, 99, Purpose.JUDGE, 2)
    assert run_stream("batch-v1", 5, 99, [7], Purpose.JUDGE, 2, scheme=COUNTER_SCHEME) == \
        batch_stream(5, 99, Purpose.JUDGE, 2, scheme=COUNTER_SCHEME)
    assert {s.full_path[1] for s in roots.leaves}.isdisjoint({int(Scope.BATCH), int(Scope.SWEEP)})


def test_the_named_streams_outside_an_evaluation_keep_the_paths_the_code_used_inline() -> None:
    """Each named stream of freqpure.noise has the literal path (or seeded generator) its caller derived inline
    before it was named, and draws the same numbers: the clean, vote and passthrough streams (evaluation/clean.py,
    passthrough.py), the frequency analysis' (evaluation/analyze.py), the purified data's (purified_data.py) and
    AutoAttack's children (attacks/autoattack.py, the runner's pool)."""
    from freqpure import noise
    from freqpure.passthrough import passthrough_noise

    like = torch.empty(2, 3, 4, 4, dtype=torch.float64)
    literal = {  # named stream -> what the code wrote before
        noise.clean_batch_stream(9, 4): StepNoise(9).child(4),
        noise.vote_batch_stream(9, 4): StepNoise(9).child(10_000 + 4),
        noise.passthrough_stream(9, 17): StepNoise(9).child(7_000_000).child(17),
        noise.analysis_batch_stream(9, 4): StepNoise(9).child(4),
        noise.analysis_attack_stream(9, 4): StepNoise(9 + 4),
        noise.purify_chunk_stream(9, 4): StepNoise(9).child(4),
    }
    for named, inline in literal.items():
        assert named.full_path == inline.full_path and named.scheme == inline.scheme
        assert torch.equal(named(3, like), inline(3, like))
    assert noise.passthrough_stream(9, 17).full_path == (9, 7_000_000, 17) and noise.PASSTHROUGH_SALT == 7_000_000
    assert noise.vote_batch_stream(9, 4).full_path == (9, 10_004)
    assert noise.analysis_attack_stream(9, 4).full_path == (13,)
    one = torch.empty(1, 3, 4, 4, dtype=torch.float64)  # the passthrough draw, row by row as before
    assert torch.equal(passthrough_noise([5, 17], like, 2, 9),
                       torch.cat([StepNoise(9).child(7_000_000).child(i)(2, one) for i in (5, 17)]))

    generators = {  # named generator -> the inline one
        noise.pilot_passthrough_generator(9): torch.Generator().manual_seed(9),
        noise.analysis_start_generator(9, 4): torch.Generator().manual_seed(9 + 4),
    }
    for named, inline in generators.items():
        assert named.device.type == "cpu" and named.initial_seed() == inline.initial_seed()
        assert torch.equal(torch.randn(5, generator=named, dtype=torch.float64),
                           torch.randn(5, generator=inline, dtype=torch.float64))

    root = batch_stream(3, 2, Purpose.ATTACK, 1)
    start = batch_stream(3, 2, Purpose.START, 1)
    pool = batch_stream(3, 2, Purpose.POOL, 1)
    assert noise.autoattack_model_stream(root) == root.child(0)
    assert noise.autoattack_probe_stream(root) == root.child(1)
    assert noise.autoattack_seed(start) == start.int_seed(31)
    assert noise.autoattack_stage_seed(noise.autoattack_seed(start), 2) == int(start.int_seed(31)) + 2
    assert noise.pool_stream(pool, 2) == pool.child(2)
    assert torch.equal(noise.pool_stream(pool, 2)(0, like), pool.child(2)(0, like))
