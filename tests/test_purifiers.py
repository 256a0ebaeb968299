"""Purifiers and the defended classifier on real CIFAR-10 images with a small ε-network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from freqpure import DiffPure, FreqPure, PurifiedClassifier, StepNoise
from freqpure.models.adapters import EpsModel
from freqpure.transforms import Resize


class TinyEpsNet(nn.Module):
    """A small conditional conv net standing in for a UNet (structure tests need no trained weights)."""

    def __init__(self, channels: int = 3, out_channels: int | None = None) -> None:
        super().__init__()
        self.inp = nn.Conv2d(channels, 16, 3, padding=1)
        self.time = nn.Linear(1, 16)
        self.out = nn.Conv2d(16, out_channels or channels, 3, padding=1)
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = torch.tanh(self.inp(x) + self.time(t.view(-1, 1) / 1000)[:, :, None, None])
        return self.out(h)


@pytest.fixture()
def eps_model() -> EpsModel:
    torch.manual_seed(0)
    return EpsModel(TinyEpsNet(), image_size=32, channels=3, name="tiny")


@pytest.fixture(scope="module")
def images(real_images) -> torch.Tensor:
    return real_images[:6]


def test_freqpure_whole_spectrum_zero_delta_returns_the_input(eps_model, images):
    purifier = FreqPure(eps_model, amp_radius=23, phase_radius=23, delta=0.0, t_star=100, steps=5)
    torch.testing.assert_close(purifier(images), images, rtol=0, atol=1e-5)


def test_freqpure_whole_spectrum_with_denoised_reference_returns_that_reference(eps_model, images):
    purifier = FreqPure(eps_model, 23, 23, 0.0, t_star=100, steps=5, reference="denoised", reference_t=20)
    noise = StepNoise(3)
    out = purifier(images, noise)
    ref = purifier.denoised_reference(images * 2 - 1, noise.child(0)(50_000, images))
    torch.testing.assert_close(out, (ref + 1) / 2, rtol=0, atol=1e-5)


def test_purification_is_reproducible_from_the_seed(eps_model, images):
    a = FreqPure(eps_model, t_star=100, steps=5, seed=7)
    b = FreqPure(eps_model, t_star=100, steps=5, seed=7)
    c = FreqPure(eps_model, t_star=100, steps=5, seed=8)
    with torch.no_grad():
        out_a, out_b, out_c = a(images), b(images), c(images)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    assert float((out_a - out_c).abs().max()) > 1e-3
    with torch.no_grad():
        assert float((a(images) - out_a).abs().max()) > 1e-3, "each call draws new noise"


def test_model_calls_match_the_plan(eps_model, images):
    net = eps_model.net
    FreqPure(eps_model, t_star=100, steps=10)(images)
    assert net.calls == 10
    net.calls = 0
    FreqPure(eps_model, reference="denoised", t_star=100, steps=10)(images)
    assert net.calls == 11, "reference computed once per run"
    net.calls = 0
    FreqPure(eps_model, reference="denoised", recompute_reference=True, t_star=100, steps=10)(images)
    assert net.calls == 20, "the official code's cost: two model calls per step"
    net.calls = 0
    FreqPure(eps_model, rounds="20:5*5,50:5*5", reference="denoised")(images)
    assert net.calls == 10 * (5 + 1)
    net.calls = 0
    DiffPure(eps_model, t_star=100, steps=25, sampler="sde")(images)
    assert net.calls == 25


def test_learned_variance_models_are_purified(images):
    model = EpsModel(TinyEpsNet(out_channels=6), image_size=32, learn_sigma=True)
    for sampler in ("ddpm", "ddim", "sde"):
        out = FreqPure(model, t_star=50, steps=5, sampler=sampler)(images)
        assert out.shape == images.shape and torch.isfinite(out).all()


def test_gradients_flow_through_every_purifier(eps_model, images):
    for purifier in (
        FreqPure(eps_model, t_star=100, steps=4),
        FreqPure(eps_model, t_star=100, steps=4, mode="official", reference="denoised", recompute_reference=True),
        DiffPure(eps_model, t_star=100, steps=4),
        DiffPure(eps_model, t_star=100, steps=4, sampler="sde", checkpoint=True),
    ):
        x = images.clone().requires_grad_(True)
        purifier(x, StepNoise(0)).square().sum().backward()
        assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0, purifier


def test_surrogate_copy_shares_the_model_and_changes_only_the_plan(eps_model, images):
    defence = FreqPure(eps_model, t_star=100, steps=20, seed=1)
    surrogate = defence.with_rounds("100:1")
    assert surrogate.eps_model is defence.eps_model and surrogate.delta == defence.delta
    assert [(r.t_star, r.steps) for r in surrogate.rounds] == [(100, 1)]
    assert [(r.t_star, r.steps) for r in defence.rounds] == [(100, 20)]
    assert surrogate(images).shape == images.shape


@pytest.mark.parametrize(
    "make_input, match",
    [
        (lambda x: x[0], "must be 4-D"),
        (lambda x: x[:, :1], "must have 3 channels"),
        (lambda x: x * 255, r"outside \[0.0, 1.0\]"),
        (lambda x: x.masked_fill(x > 0.9, float("nan")), "NaN/Inf"),
        (lambda x: torch.nn.functional.interpolate(x, size=48), "must be 32x32 for this model"),
        (lambda x: (x * 255).to(torch.uint8), "floating-point"),
    ],
)
def test_bad_images_are_refused(eps_model, images, make_input, match):
    with pytest.raises(ValueError, match=match):
        FreqPure(eps_model, t_star=10, steps=2)(make_input(images))


def test_out_of_range_input_can_be_clamped_on_request(eps_model, images):
    out = FreqPure(eps_model, t_star=10, steps=2, clamp_input=True)(images * 1.2 - 0.1)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(amp_radius=-1), "amp_radius must be a finite number >= 0"),
        (dict(delta=float("nan")), "delta must be a finite number"),
        (dict(reference="clean"), "reference must be 'input' or 'denoised'"),
        (dict(mode="fast"), "mode must be 'paper' or 'official'"),
        (dict(sampler="euler"), "sampler must be one of ddpm, ddim, sde"),
        (dict(t_star=1200), "t_star must be in 1..1000"),
        (dict(t_star=10, steps=20), "steps must be in 1..t_star"),
        (dict(rounds="20-5"), "cannot parse round"),
    ],
)
def test_bad_settings_are_refused(eps_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FreqPure(eps_model, **kwargs)


def test_radius_too_large_for_the_image_is_refused(eps_model, images):
    with pytest.raises(ValueError, match="amp_radius=30 is larger than the 32x32 spectrum"):
        FreqPure(eps_model, amp_radius=30, t_star=10, steps=2)(images)


class LinearClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        return self.fc(x.flatten(1) - 0.5) * 10


def test_ensemble_is_batched_and_votes_are_counted(eps_model, images):
    purifier = FreqPure(eps_model, t_star=100, steps=3, seed=0)
    defended = PurifiedClassifier(LinearClassifier(), purifier, ensemble=5)
    noise = StepNoise(11)
    per_draw = defended.logits_per_draw(images, noise)
    assert per_draw.shape == (5, len(images), 10)
    scores = defended(images, noise)
    votes = torch.nn.functional.one_hot(per_draw.argmax(-1), 10).float().mean(0)
    torch.testing.assert_close(scores.detach().round(decimals=2), votes.round(decimals=2))
    assert torch.equal(scores.argmax(-1), (votes + 1e-3 * per_draw.softmax(-1).mean(0)).argmax(-1))
    # chunking the ensemble keeps the shapes and the vote semantics
    chunked = PurifiedClassifier(LinearClassifier(), purifier, ensemble=5, max_batch=4)
    assert chunked(images, noise).shape == (len(images), 10)


def test_majority_vote_is_differentiable_straight_through(eps_model, images):
    defended = PurifiedClassifier(LinearClassifier(), FreqPure(eps_model, t_star=50, steps=2), ensemble=3)
    x = images.clone().requires_grad_(True)
    scores = defended(x)
    torch.nn.functional.cross_entropy(scores, torch.zeros(len(images), dtype=torch.long)).backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("vote", ["logits", "softmax"])
def test_other_votes(eps_model, images, vote):
    defended = PurifiedClassifier(LinearClassifier(), FreqPure(eps_model, t_star=50, steps=2), ensemble=2, vote=vote)
    noise = StepNoise(5)
    logits = defended.logits_per_draw(images, noise)
    expected = logits.mean(0) if vote == "logits" else logits.softmax(-1).mean(0).log()
    torch.testing.assert_close(defended(images, noise), expected, rtol=1e-5, atol=1e-5)


def test_pre_and_post_transforms(images):
    """ImageNet-style wiring: purify at a larger size, classify at the classifier's size."""
    big = EpsModel(TinyEpsNet(), image_size=64)
    defended = PurifiedClassifier(
        LinearClassifier(), FreqPure(big, t_star=20, steps=2), preprocess=Resize(64), postprocess=Resize(32)
    )
    assert defended(images).shape == (len(images), 10)


def test_freqpure_t_start_is_the_old_keyword_of_t_star(eps_model, images):
    """One name per concept: ``t_star`` (as DiffPure and the plan say); ``t_start`` still read."""
    new = FreqPure(eps_model, t_star=30, steps=2)
    old = FreqPure(eps_model, t_start=30, steps=2)
    assert [(r.t_star, r.steps) for r in old.rounds] == [(r.t_star, r.steps) for r in new.rounds] == [(30, 2)]
    with pytest.raises(ValueError, match="t_start=30 is the old name of t_star=40"):
        FreqPure(eps_model, t_star=40, t_start=30, steps=2)
