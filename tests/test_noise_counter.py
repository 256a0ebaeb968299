"""Noise schemes (#25): the old scheme's numbers are unchanged by its faster path, and the counter scheme
``counter-v1`` is Philox-4x32-10, addressed like StepNoise, batched per row, batch-size independent."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import freqpure
from freqpure.errors import UsageError
from freqpure.noise import (
    COUNTER_SCHEME,
    CounterNoise,
    counter_normals,
    identity_words,
    make_noise,
    noise_scheme_of,
    philox4x32,
)
from freqpure.samplers import NOISE_SCHEME, DrawNoise, StepNoise
from helpers import same_machine


def _h(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:32]


# Computed by the unmodified code of c71875b (StepNoise drawing one numpy generator per stream and call,
# DrawNoise concatenating per-stream draws) before the batched host path was written: the faster path
# must give these numbers to the bit.
OLD_SCHEME_DRAWS = {
    "step_7_3_k5": "442ee9fdaff032f327af80046d54241d",
    "step_big_path": "8c623e4f6e7cb30120d9408d6c3a73cc",
    "draw_rows_12": "2d3ebaba78ce386bd92d1b33e0cf7698",
    "draw_rows_12_child": "5886740e7c4cfdb1562da7693e051ca8",
    "draw_from_seed_4x2": "e48084026a978b81bcc9f265732acb50",
    "draw_f64": "3c771c7da2ef4c0fe0c73f69e339be7c",
}
# The same code's purifications with an elementwise ε-model: sampler arithmetic and noise addressing end to end,
# per image and ensemble draw, chunked. Hashed on the machine below; the tensors themselves (made by c71875b's
# code there) are in tests/fixtures/old_scheme_purify_c71875b.pt for every other machine, whose vector kernels
# may round differently (a changed noise address moves the outputs by 1e-2 or more, float rounding by 1e-6).
OLD_SCHEME_MACHINE = {"cpu_model": "AMD EPYC", "cpu_capability": "AVX2", "torch": "2.13.0+cpu"}
OLD_SCHEME_PURIFY = {
    "purify_ddpm": "7008fdff32967650e91fbb5cc0bb9b06",
    "purify_official": "7d72179289885a538abe2a66db5e2ba9",
    "purify_sde": "609ebfaf96b14b11ca6b283ce41d2ee6",
    "purify_ddpm_2rounds": "c460d14023488ac61e38b87ef723d613",
}


def _old_scheme_draws() -> dict[str, str]:
    out = {}
    like = torch.empty(3, 3, 8, 8)
    out["step_7_3_k5"] = _h(StepNoise(7).child(3)(5, like))
    out["step_big_path"] = _h(StepNoise(2**40, (1, 2, -3))(90_000, torch.empty(2, 3, 32, 32)))
    rows = StepNoise(11).rows(6)
    dn = DrawNoise([s.child(e) for e in range(2) for s in rows])
    out["draw_rows_12"] = _h(dn(4, torch.empty(12, 3, 32, 32)))
    out["draw_rows_12_child"] = _h(dn.child(1)(100_004, torch.empty(12, 3, 32, 32)))
    out["draw_from_seed_4x2"] = _h(DrawNoise.from_seed(5, 4)(0, torch.empty(8, 3, 4, 4)))
    out["draw_f64"] = _h(dn(4, torch.empty(12, 3, 32, 32, dtype=torch.float64)))
    return out


def _eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.1 * x + 1e-4 * t[:, None, None, None]


def _purifiers() -> dict[str, freqpure.Purifier]:
    return {"ddpm": freqpure.DiffPure(_eps, 100, 3), "official": freqpure.DiffPure(_eps, 100, 4, variant="official"),
            "sde": freqpure.DiffPure(_eps, 100, 3, sampler="sde"),
            "ddpm_2rounds": freqpure.DiffPure(_eps, rounds="20:2,30:3")}


def test_old_scheme_draws_are_bit_identical_to_the_unmodified_code() -> None:
    assert NOISE_SCHEME == "blake2b-philox-v2"  # the default is unchanged
    assert _old_scheme_draws() == OLD_SCHEME_DRAWS


def test_old_scheme_purifications_are_bit_identical_to_the_unmodified_code() -> None:
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
    got = {}
    with torch.no_grad():
        for name, p in _purifiers().items():
            d = freqpure.PurifiedClassifier(clf, p, ensemble=2, vote="logits", max_batch=4)
            got["purify_" + name] = d.purify(x, StepNoise(3))
    if same_machine(OLD_SCHEME_MACHINE):
        assert {k: _h(v) for k, v in got.items()} == OLD_SCHEME_PURIFY  # bit for bit where they were made
    reference = torch.load(Path(__file__).parent / "fixtures" / "old_scheme_purify_c71875b.pt", weights_only=True)
    assert reference.keys() == got.keys()
    for name, value in got.items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=1e-5, msg=name)


def test_old_scheme_batched_draw_equals_one_generator_per_stream() -> None:
    """The batched host path against numpy directly: every row is its own stream's generator."""
    streams = StepNoise(2).rows(5)
    z = DrawNoise(streams)(9, torch.empty(5, 2, 3))
    for i, s in enumerate(streams):
        ref = np.random.Generator(np.random.Philox(key=s.key(9))).standard_normal((1, 2, 3), dtype=np.float32)
        assert np.array_equal(z[i : i + 1].numpy(), ref)


# ---------------------------------------------------------------------------------------------
# counter-v1
# ---------------------------------------------------------------------------------------------
def test_philox4x32_matches_the_random123_known_answers() -> None:
    def run(c, k):
        words = philox4x32(*(torch.tensor([v]) for v in c), *(torch.tensor([v]) for v in k))
        return [int(w) for w in words]

    assert run([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert run([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert run([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_counter_draws_are_gaussian_replayable_and_addressed_like_stepnoise() -> None:
    like = torch.empty(4, 3, 16, 16)
    a = CounterNoise(7).child(3)
    first = a(5, like)
    a(6, like)
    assert torch.equal(CounterNoise(7, (3,))(5, like), first)  # same path and key, any call order
    assert not torch.equal(a(6, like), first)
    assert not torch.equal(CounterNoise(7).child(4)(5, like), first)
    z = CounterNoise(1)(0, torch.empty(200_000)).double()
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert abs(float((z**3).mean())) < 0.03 and abs(float((z**4).mean()) - 3) < 0.05  # skew, kurtosis
    assert float((z.abs() > 3).double().mean()) == pytest.approx(0.0027, abs=0.0006)
    torch.testing.assert_close(a(5, like.double()), first.double())  # made in float32, then cast


def test_counter_scheme_streams_do_not_collide() -> None:
    like = torch.empty(1, 3, 4, 4)
    assert not torch.equal(CounterNoise(0).child(31)(0, like), CounterNoise(17).child(0)(0, like))
    assert CounterNoise(5).identity != CounterNoise(5 + 2**32).identity
    paths = [(5, 2**32 + 3), (5, 3, 1), (5, 3), (5, 3, 0), (5, -3), (-5, 3), (0,), (0, 0), (2**63, 1)]
    assert len({CounterNoise(p[0], p[1:]).identity for p in paths}) == len(paths)
    # the two schemes never share numbers: another domain and another generator
    assert not torch.allclose(CounterNoise(3)(0, like), StepNoise(3)(0, like))
    with pytest.raises(UsageError, match="64 bits"):
        CounterNoise(0).child(2**70)
    with pytest.raises(UsageError, match="2\\*\\*32"):
        CounterNoise(0)(2**32, like)


def test_counter_rows_are_batched_in_one_call_and_do_not_depend_on_batch_size() -> None:
    root = CounterNoise(11)
    rows = root.rows(6)
    like = torch.empty(6, 3, 8, 8)
    batched = DrawNoise(rows)(4, like)
    one_by_one = torch.cat([r(4, like[:1]) for r in rows])
    assert torch.equal(batched, one_by_one)
    assert torch.equal(DrawNoise(rows[2:5])(4, like[:3]), batched[2:5])  # a chunk: the same rows
    # a stream's element e is the same whatever the shape of the draw
    assert torch.equal(root(0, torch.empty(10)), root(0, torch.empty(2, 7)).flatten()[:10])


def test_counter_normals_take_one_identity_per_row() -> None:
    streams = CounterNoise(4).rows(3)
    words = identity_words([s.identity for s in streams])
    z = counter_normals(words, 12, 50)
    assert z.shape == (3, 50) and z.dtype == torch.float32
    for i, s in enumerate(streams):
        assert torch.equal(z[i], s(12, torch.empty(50)))


def test_counter_draws_match_a_float64_reference_to_float_rounding() -> None:
    """What another device may differ by: Box–Muller in float32 against float64 from the same words."""
    z = CounterNoise(9)(3, torch.empty(4096))
    words = identity_words([CounterNoise(9).identity])[0].tolist()
    c0 = torch.arange(1024)[None]
    w = philox4x32(c0, torch.full_like(c0, 3), torch.full_like(c0, words[2]), torch.full_like(c0, words[3]),
                   torch.tensor([[words[0]]]), torch.tensor([[words[1]]]))
    ref = []
    for a, b in ((w[0], w[1]), (w[2], w[3])):
        u1 = ((a >> 8).double() + 0.5) * 2.0**-24
        u2 = (b >> 8).double() * 2.0**-24
        r = torch.sqrt(-2 * torch.log(u1))
        ref += [r * torch.cos(2 * math.pi * u2), r * torch.sin(2 * math.pi * u2)]
    ref = torch.stack(ref, -1).reshape(-1)
    torch.testing.assert_close(z.double(), ref, rtol=0, atol=2e-5)


def test_purifier_with_counter_noise_is_chunk_independent_and_differs_from_the_old_scheme() -> None:
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
    p = freqpure.DiffPure(_eps, 100, 3)
    with torch.no_grad():
        whole = freqpure.PurifiedClassifier(clf, p, ensemble=2, vote="logits").purify(x, CounterNoise(3))
        chunked = freqpure.PurifiedClassifier(clf, p, ensemble=2, vote="logits", max_batch=1).purify(x, CounterNoise(3))
        old = freqpure.PurifiedClassifier(clf, p, ensemble=2, vote="logits").purify(x, StepNoise(3))
    assert torch.equal(whole, chunked)
    assert not torch.allclose(whole, old)


def test_make_noise_and_scheme_names() -> None:
    assert isinstance(make_noise(1), StepNoise) and make_noise(1, (2,)) == StepNoise(1, (2,))
    assert isinstance(make_noise(1, (), COUNTER_SCHEME), CounterNoise)
    assert noise_scheme_of(CounterNoise(1)) == COUNTER_SCHEME == "counter-v1"
    assert noise_scheme_of(DrawNoise.from_seed(1, 2, COUNTER_SCHEME)) == COUNTER_SCHEME
    assert noise_scheme_of(StepNoise(1)) == noise_scheme_of(DrawNoise.from_seed(1, 2)) == NOISE_SCHEME
    with pytest.raises(UsageError, match="noise_scheme must be one of"):
        make_noise(1, (), "linear-v1")


def test_purifier_draws_its_own_noise_in_its_scheme() -> None:
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = freqpure.DiffPure(_eps, 100, 2, seed=4, noise_scheme=COUNTER_SCHEME)(x)
        b = freqpure.DiffPure(_eps, 100, 2, seed=4, noise_scheme=COUNTER_SCHEME)(x)
        c = freqpure.DiffPure(_eps, 100, 2, seed=4)(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert isinstance(freqpure.DiffPure(_eps, 100, 2, noise_scheme=COUNTER_SCHEME).new_noise(), CounterNoise)
    with pytest.raises(UsageError, match="noise_scheme"):
        freqpure.DiffPure(_eps, 100, 2, noise_scheme="philox")


def test_eval_config_keeps_old_dicts_and_records_a_chosen_scheme() -> None:
    from freqpure.config import to_dict
    from freqpure.evaluation import load_eval_config
    from freqpure.noise import Purpose, batch_stream

    assert "noise_scheme" not in to_dict(load_eval_config(None))  # old configs and fingerprints unchanged
    cfg = load_eval_config(None, [f"noise_scheme={COUNTER_SCHEME}"])
    assert to_dict(cfg)["noise_scheme"] == COUNTER_SCHEME
    assert isinstance(batch_stream(0, 1, Purpose.ATTACK, 0, scheme=cfg.noise_scheme), CounterNoise)
    assert batch_stream(0, 1, Purpose.ATTACK, 0) == StepNoise(0, (0, 1, int(Purpose.ATTACK), 0))
    with pytest.raises(UsageError, match="noise_scheme must be one of"):
        load_eval_config(None, ["noise_scheme=linear-v1"])


@pytest.mark.data
@pytest.mark.slow
def test_an_evaluation_with_the_counter_scheme_records_it_and_resumes_only_with_it(tmp_path) -> None:
    import json

    from freqpure.errors import RunFolderError
    from freqpure.evaluation import evaluate, load_eval_config
    from freqpure.evaluation.runner import check_noise_scheme
    from helpers import model_name

    small = ["name=t", "data.n=2", "batch_size=2", "purifier.rounds=30:1", "defence.ensemble=1",
             "attacks.0.steps=1", "attacks.0.eot=1", "sanity.enabled=false",
             f"classifier.name={model_name('cifar10-resnet-small')}",
             f"purifier.diffusion={model_name('cifar10-ddpm-small')}", f"noise_scheme={COUNTER_SCHEME}"]
    cfg = load_eval_config(None, small)
    res = evaluate(cfg, tmp_path / "run", progress=False)
    assert res.noise_scheme == COUNTER_SCHEME
    raw = json.loads((tmp_path / "run" / "results.json").read_text())
    assert raw["noise_scheme"] == raw["protocol"]["noise_scheme"] == COUNTER_SCHEME
    lines = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert {r["noise_scheme"] for r in lines} == {COUNTER_SCHEME}
    records = {r["index"]: r for r in lines}
    check_noise_scheme(records, tmp_path, COUNTER_SCHEME)  # the run's own scheme: accepted
    with pytest.raises(RunFolderError, match="noise scheme counter-v1; this run draws with blake2b-philox-v2"):
        check_noise_scheme(records, tmp_path, NOISE_SCHEME)


def test_draws_of_per_image_draws_are_one_flat_batched_call_with_each_rows_numbers() -> None:
    """A DrawNoise whose draws are DrawNoises of one stream per image (EOT over image-v1 streams) gives every
    row its own stream's numbers, the same as asking each draw, and rows that do not depend on the batch."""
    from freqpure.noise import Purpose, eot_draws, image_streams

    like = torch.empty(3 * 4, 3, 8, 8)
    root = image_streams(1, [10, 11, 12, 13], Purpose.ATTACK)
    nested = eot_draws(root, 2, 3)
    assert len(nested.leaves) == 12 and nested._kind == "counter"
    got = nested(5, like)
    per_draw = torch.cat([d(5, like[:4]) for d in nested.streams])
    assert torch.equal(got, per_draw)
    per_row = torch.cat([s(5, like[:1]) for s in nested.leaves])
    assert torch.equal(got, per_row)
    small = eot_draws(image_streams(1, [12, 13], Purpose.ATTACK), 2, 3)(5, like[:6])  # images 12, 13 alone
    assert torch.equal(small.view(3, 2, 3, 8, 8), got.view(3, 4, 3, 8, 8)[:, 2:])
    assert torch.equal(nested.select(1, 3)(5, like[:8]), got[4:])  # EOT chunks stay whole draws
    assert nested.rows(12) == [r for s in nested.leaves for r in s.rows(1)]


def test_row_random_gives_each_row_its_own_uniforms_and_normals() -> None:
    from freqpure.noise import Purpose, RowRandom, counter_uniforms, image_streams, start_generator

    like = torch.empty(1)
    a = start_generator(image_streams(2, [3, 4, 5], Purpose.START))
    b = start_generator(image_streams(2, [5], Purpose.START))
    assert isinstance(a, RowRandom)
    ua, ub = a.random((3, 7), like), b.random((1, 7), like)
    za, zb = a.standard_normal((3, 2, 5), like), b.standard_normal((1, 2, 5), like)
    assert torch.equal(ua[2:], ub) and torch.equal(za[2:], zb)  # row 5's numbers whatever its batch
    assert 0 < float(ua.min()) and float(ua.max()) < 1 and not torch.equal(ua[0], ua[1])
    assert not torch.equal(a.random((3, 7), like), ua)  # the next call draws the next key
    u = counter_uniforms(identity_words([CounterNoise(0).identity]), 0, 200_000)
    assert abs(float(u.mean()) - 0.5) < 3e-3 and abs(float(u.var()) - 1 / 12) < 1e-3
    with pytest.raises(UsageError, match="rows"):
        a.random((2, 7), like)
    with pytest.raises(UsageError, match="counter-v1"):
        RowRandom(DrawNoise(StepNoise(0).rows(2)))
    assert isinstance(start_generator(StepNoise(0)), np.random.Generator)  # batch-v1: unchanged


def test_image_addressing_and_auto_batch_size_are_checked_and_omitted_while_unset() -> None:
    from freqpure.config import to_dict
    from freqpure.evaluation import load_eval_config

    assert "noise_addressing" not in to_dict(load_eval_config(None))  # old configs and fingerprints unchanged
    image = [f"noise_scheme={COUNTER_SCHEME}", "noise_addressing=image-v1"]
    cfg = load_eval_config(None, [*image, "batch_size=auto"])
    assert to_dict(cfg)["noise_addressing"] == "image-v1" and cfg.batch_size == "auto"
    with pytest.raises(UsageError, match="batch_size: auto needs noise_addressing: image-v1"):
        load_eval_config(None, ["batch_size=auto"])
    with pytest.raises(UsageError, match="set noise_scheme: counter-v1"):
        load_eval_config(None, ["noise_addressing=image-v1"])
    with pytest.raises(UsageError, match="noise_addressing must be one of"):
        load_eval_config(None, ["noise_addressing=row-v1"])
    with pytest.raises(UsageError, match="integer >= 1 or auto"):
        load_eval_config(None, ["batch_size=0"])
    for attack in ("attacks.0.name=autoattack", "attacks.0.name=band-pgd"):
        overrides = [*image, attack] + (["attacks.0.band_max_radius=3"] if "band" in attack else [])
        with pytest.raises(UsageError, match="rows do not depend on their batch"):
            load_eval_config(None, overrides)
    assert load_eval_config(None, [*image, "attacks.0.name=bpda", "attacks.0.gradient=bpda"]).noise_addressing


def test_fit_batch_divides_free_memory_by_the_measured_peak() -> None:
    from freqpure.evaluation.batching import fit_batch

    assert fit_batch(2**20, 100 * 2**20, 1024) == 80  # 80 % of 100 MiB at 1 MiB per image
    assert fit_batch(2**20, 13 * 2**20, 1024) == 8  # 10 images fit: a multiple of 8 from 8 up
    assert fit_batch(2**20, 5 * 2**20, 1024) == 4  # fewer than 8: as many as fit
    assert fit_batch(2**30, 2**20, 1024) == 1  # never below one image
    assert fit_batch(1, 2**40, 100) == 100  # never above the limit (the subset's size)
