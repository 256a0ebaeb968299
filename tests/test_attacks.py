"""Attacks: PGD on the bundled classifier, projections, EOT averaging, gradient modes through purifiers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from freqpure import DiffPure, FreqPure, StepNoise
from freqpure.attacks import (
    AttackModel,
    BPDAPurifier,
    DrawNoise,
    EOTGradient,
    GradientMode,
    Norm,
    attack_purifier,
    margin,
    parse_enum,
    pgd,
    project,
    random_start,
)
from freqpure.attacks.adjoint import AdjointSDEPurifier
from freqpure.data import eval_subset
from freqpure.models.adapters import EpsModel
from helpers import one_thread

pytestmark = pytest.mark.data  # the CIFAR-10 test data, found by the library itself

EPS = 8 / 255


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """One torch thread: on a busy 2-core machine a second thread mostly spin-waits."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    sub = eval_subset(20, seed=0)
    return sub.x, sub.y


class TinyEps(nn.Module):
    """A small smooth ε-net (float64-capable) for exact-gradient checks."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.tanh(self.c1(x))) * 0.5 + 0.1 * x


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(nn.functional.avg_pool2d(self.conv(x), 4)).flatten(1))


def tiny_eps(size: int = 16) -> EpsModel:
    return EpsModel(TinyEps(), image_size=size).eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------- PGD
def test_projections_are_exact() -> None:
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(5, 3, 8, 8, generator=gen)
    linf = project(delta, "linf", 0.1)
    assert torch.equal(linf, delta.clamp(-0.1, 0.1))
    l2 = project(delta, Norm.L2, 0.5)
    norms = l2.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((5,), 0.5))
    cos = nn.functional.cosine_similarity(l2.flatten(1), delta.flatten(1))
    torch.testing.assert_close(cos, torch.ones(5))  # same direction: the Euclidean projection onto the ball
    inside = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.3
    assert torch.equal(project(inside, "l2", 0.5), inside)
    x = torch.rand(4, 3, 8, 8, generator=gen)
    for norm, eps in (("linf", 0.05), ("l2", 0.5)):
        start = random_start(x, norm, eps, gen)
        d = (start - x).flatten(1)
        size = d.abs().max(1).values if norm == "linf" else d.norm(dim=1)
        assert (size <= eps + 1e-6).all() and start.min() >= 0 and start.max() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("norm,eps", [("linf", EPS), ("l2", 0.5)])
def test_pgd_breaks_the_bundled_classifier(classifier, images, norm: str, eps: float) -> None:
    x, y = images
    with torch.no_grad():
        clean = (classifier(x).argmax(1) == y).float().mean().item()
    oracle = EOTGradient(classifier, loss="ce")
    res = pgd(oracle, x, y, norm=norm, eps=eps, steps=20, generator=torch.Generator().manual_seed(0))
    d = (res.x_adv - x).flatten(1)
    size = d.abs().max(1).values if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-6).all(), "perturbation outside the eps-ball"
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    with torch.no_grad():
        robust = (classifier(res.x_adv).argmax(1) == y).float().mean().item()
    assert clean >= 0.5
    assert robust <= (0.05 if norm == "linf" else 0.25), f"{norm} PGD left {robust:.0%} accuracy (clean {clean:.0%})"


def test_pgd_keeps_the_best_iterate() -> None:
    """``keep='best'`` returns the iterate with the largest oracle loss, the final one included."""
    x, y = torch.full((1, 1, 2, 2), 0.5), torch.zeros(1, dtype=torch.long)
    losses = iter([1.0, 5.0, 2.0, 3.0])  # iterate 1 is the best

    def oracle(xa, ya):
        return torch.tensor([next(losses)]), torch.ones_like(xa)

    res = pgd(oracle, x, y, norm="linf", eps=0.1, steps=3, step_size=0.01, random_init=False)
    torch.testing.assert_close(res.x_adv, x + 0.01)
    assert res.loss.item() == 5.0


def test_margin_and_enums() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    torch.testing.assert_close(margin(logits, torch.tensor([0, 0])), torch.tensor([-1.0, 3.0]))
    assert parse_enum(Norm, "Linf", "norm") is Norm.LINF and parse_enum(Norm, "L2", "norm") is Norm.L2
    assert parse_enum(GradientMode, GradientMode.BPDA, "mode") is GradientMode.BPDA
    with pytest.raises(ValueError, match="unknown norm 'l3'; valid: linf, l2"):
        parse_enum(Norm, "l3", "norm")
    with pytest.raises(ValueError, match="valid: full, surrogate, adjoint, bpda"):
        attack_purifier(nn.Identity(), "magic")


# --------------------------------------------------------------------------------------------- EOT
@pytest.mark.slow
def test_eot_gradient_is_the_mean_of_per_draw_gradients(classifier, eps_model, images) -> None:
    x, y = images[0][:2], images[1][:2]
    model = AttackModel(classifier, FreqPure(eps_model, 3, 3, 0.3, rounds="30:2"))

    def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
        # Batched and per-draw calls differ by float rounding only; the classifier's max-pooling can route a
        # few pixels' gradient elsewhere when two activations tie within that rounding, so compare in norm.
        assert (a - b).norm() <= 2e-3 * b.norm(), f"relative difference {(a - b).norm() / b.norm():.2e}"
    oracle = EOTGradient(model, eot=3, seed=7)
    loss, grad = oracle(x, y)
    noise = oracle.noise_at(0)
    per_loss, per_grad = [], []
    for k in range(3):
        xk = x.clone().requires_grad_(True)
        lk = nn.functional.cross_entropy(model(xk, noise.select(k, k + 1)), y, reduction="none")
        per_grad.append(torch.autograd.grad(lk.sum(), xk)[0])
        per_loss.append(lk.detach())
    torch.testing.assert_close(loss, torch.stack(per_loss).mean(0), rtol=1e-4, atol=1e-5)
    assert_same(grad, torch.stack(per_grad).mean(0))
    assert (per_grad[0] - per_grad[1]).norm() > 0.1 * per_grad[0].norm(), "draws must be independent"
    chunked = EOTGradient(model, eot=3, seed=7, max_batch=2)  # one draw per call: same numbers
    loss_c, grad_c = chunked(x, y)
    torch.testing.assert_close(loss_c, loss, rtol=1e-4, atol=1e-5)
    assert_same(grad_c, grad)


def test_draw_noise_streams_do_not_depend_on_chunking() -> None:
    noise = DrawNoise.from_seed(3, 4)
    like = torch.empty(4 * 2, 3, 4, 4)
    full = noise(5, like)
    parts = torch.cat([noise.select(k, k + 1)(5, like[:2]) for k in range(4)])
    assert torch.equal(full, parts)
    assert torch.equal(noise.child(1)(5, like)[:2], noise.select(0, 1).child(1)(5, like[:2]))


# --------------------------------------------------------------------------------------------- gradient modes
@pytest.mark.slow
def test_full_mode_gradient_equals_plain_backprop(classifier, eps_model, images) -> None:
    x, y = images[0][:2], images[1][:2]
    purifier = FreqPure(eps_model, 3, 3, 0.3, rounds="40:3", mode="official")
    full = attack_purifier(purifier, "full")
    assert full.checkpoint == "auto" and not purifier.checkpoint  # the defence itself is untouched
    grads = []
    for p in (purifier, full):
        xr = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(classifier(p(xr, StepNoise(3))), y)
        grads.append(torch.autograd.grad(loss, xr)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)
    assert grads[0].abs().sum() > 0


def test_purified_input_gradient_matches_finite_differences() -> None:
    """No gradient masking: the analytic input gradient of classifier ∘ FreqPure matches central differences."""
    torch.manual_seed(0)
    eps = tiny_eps().double()
    net = TinyNet().double().eval().requires_grad_(False)
    purifier = FreqPure(eps, 3, 3, 0.3, rounds="30:3", checkpoint=True)
    model = AttackModel(net, purifier)
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64) * 0.8 + 0.1
    y = torch.tensor([2])
    noise = StepNoise(11)

    def f(z: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(z, noise), y)

    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xr), xr)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        h = 1e-5
        fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
        torch.testing.assert_close((g * v).sum(), fd, rtol=1e-5, atol=1e-9)


def test_surrogate_mode_differentiates_fewer_steps_at_the_same_noise(eps_model) -> None:
    purifier = DiffPure(eps_model, t_star=60, steps=6)
    surrogate = attack_purifier(purifier, GradientMode.SURROGATE, "60:1")
    assert [(r.t_star, r.steps) for r in surrogate.rounds] == [(60, 1)] and surrogate.checkpoint == "auto"
    assert [(r.t_star, r.steps) for r in purifier.rounds] == [(60, 6)]
    with pytest.raises(ValueError, match="noise levels"):
        attack_purifier(purifier, "surrogate", "30:1")
    with pytest.raises(ValueError, match="surrogate_rounds"):
        attack_purifier(purifier, "surrogate")


def test_bpda_is_identity_in_the_backward_pass() -> None:
    purifier = DiffPure(tiny_eps(8), t_star=30, steps=2)
    bpda = BPDAPurifier(purifier)
    x = torch.rand(2, 3, 8, 8).requires_grad_(True)
    out = bpda(x, StepNoise(1))
    torch.testing.assert_close(out, purifier(x.detach(), StepNoise(1)))
    w = torch.randn_like(out)
    (g,) = torch.autograd.grad((out * w).sum(), x)
    torch.testing.assert_close(g, w)


@pytest.mark.parametrize("method", ["diffpure", "freqpure"])
def test_adjoint_matches_the_full_gradient_of_the_sde_sampler(method: str) -> None:
    eps = tiny_eps()
    if method == "diffpure":
        purifier = DiffPure(eps, t_star=100, steps=20, sampler="sde")
    else:
        purifier = FreqPure(eps, 3, 3, 0.3, t_star=100, steps=20, sampler="sde")
    adjoint = attack_purifier(purifier, "adjoint")
    assert isinstance(adjoint, AdjointSDEPurifier)
    x = torch.rand(2, 3, 16, 16)
    outs, grads = [], []
    for p in (purifier, adjoint):
        xr = x.clone().requires_grad_(True)
        out = p(xr, StepNoise(5))
        w = torch.linspace(-1, 1, out.numel()).view_as(out)
        grads.append(torch.autograd.grad((out * w).sum(), xr)[0])
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)  # same noise → same process
    cos = nn.functional.cosine_similarity(grads[0].flatten(), grads[1].flatten(), dim=0)
    assert cos > 0.999, f"adjoint gradient off: cosine {cos:.4f}"
    with pytest.raises(ValueError, match="sampler='sde'"):
        attack_purifier(DiffPure(eps, t_star=30, steps=2), "adjoint")


@pytest.mark.slow
def test_autoattack_rand_breaks_the_undefended_classifier(classifier, images) -> None:
    from freqpure.attacks import run_autoattack

    x, y = images[0][:4], images[1][:4]
    x_adv = run_autoattack(classifier, x, y, norm="linf", eps=EPS, version="rand", eot_iter=1, seed=0)
    assert ((x_adv - x).abs().amax(dim=(1, 2, 3)) <= EPS + 1e-6).all()
    with torch.no_grad():
        assert (classifier(x_adv).argmax(1) == y).sum() == 0
    with pytest.raises(ValueError, match="unknown AutoAttack version"):
        run_autoattack(classifier, x, y, norm="linf", eps=EPS, version="plus")


def test_eot_falls_back_to_fewer_draws_per_call_when_out_of_memory() -> None:
    class Noisy(nn.Module):
        stochastic = True

        def __init__(self, limit: int) -> None:
            super().__init__()
            self.limit = limit
            self.w = torch.linspace(-1, 1, 10 * 12).view(10, 12)

        def forward(self, x: torch.Tensor, noise) -> torch.Tensor:
            if x.shape[0] > self.limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
            return nn.functional.linear(x.flatten(1) + 0.1 * noise(0, x).flatten(1), self.w)

    x, y = torch.rand(2, 3, 2, 2), torch.tensor([1, 2])
    small = EOTGradient(Noisy(limit=4), eot=8, seed=3)
    loss, grad = small(x, y)
    assert small.max_batch == 4  # halved twice: 8 draws → 4 → 2 per call
    ref_loss, ref_grad = EOTGradient(Noisy(limit=100), eot=8, seed=3)(x, y)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)
    with pytest.raises(torch.OutOfMemoryError):
        EOTGradient(Noisy(limit=1), eot=2, seed=3)(x, y)
