"""The attack interface and registry, the stochastic-model protocol, band-limited PGD, the official mismatched
surrogate, AutoAttack against a voting defence, and the pyautoattack pin."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from freqpure import DiffPure, FreqPure, PurifiedClassifier, StepNoise
from freqpure.attacks import EOTGradient, StochasticModel, attack_purifier
from freqpure.attacks.band import band_constrain, band_project, out_of_band_fraction
from freqpure.attacks.gradients import matched_surrogate
from freqpure.attacks.pgd import pgd
from freqpure.attacks.registry import (
    _REGISTRY,
    AttackContext,
    AttackResult,
    attack_names,
    get_attack,
    register_attack,
)
from freqpure.attacks.settings import AttackSettings
from freqpure.data import eval_subset
from freqpure.errors import UnknownNameError, UsageError
from freqpure.evaluation import AttackConfig, evaluate, load_eval_config
from freqpure.evaluation.components import build_defence
from helpers import model_name, one_thread

REPO = Path(__file__).resolve().parents[1]
EPS = 8 / 255


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    sub = eval_subset(8, seed=0)
    return sub.x, sub.y


# --------------------------------------------------------------------------------------------- registry
def test_registry_lists_the_attacks_and_names_unknown_ones() -> None:
    assert {"pgd", "bpda", "band-pgd", "autoattack"} <= set(attack_names())
    with pytest.raises(UnknownNameError, match="unknown attack 'fgsm'; valid: autoattack, band-pgd, bpda, pgd"):
        get_attack("fgsm")
    with pytest.raises(UnknownNameError, match="unknown attack 'fgsm'"):
        load_eval_config(None, ["attacks.0.name=fgsm"])


def test_each_attack_validates_its_own_keys() -> None:
    with pytest.raises(UsageError, match="use name: band-pgd"):
        AttackConfig(name="pgd", band_max_radius=3)
    with pytest.raises(UsageError, match="band-pgd' needs band_max_radius"):
        AttackConfig(name="band-pgd")
    with pytest.raises(UsageError, match="finite number > 0"):
        AttackConfig(name="band-pgd", band_max_radius=-1)
    with pytest.raises(UsageError, match="uses gradient 'bpda'"):
        AttackConfig(name="bpda", gradient="surrogate", surrogate_rounds="20:1")
    assert AttackConfig(name="bpda").gradient == "bpda"
    with pytest.raises(UsageError, match="unknown AutoAttack version 'plus'"):
        AttackConfig(name="autoattack", version="plus")


def test_each_attack_has_typed_settings_and_refuses_foreign_keys() -> None:
    from freqpure.attacks.autoattack import AutoAttackSettings
    from freqpure.attacks.band import BandPGDSettings
    from freqpure.attacks.pgd import BPDASettings, PGDSettings
    from freqpure.config import from_dict, to_dict

    kinds = {"pgd": PGDSettings, "bpda": BPDASettings, "band-pgd": BandPGDSettings, "autoattack": AutoAttackSettings}
    for name, kind in kinds.items():
        extra = {"band_max_radius": 3} if name == "band-pgd" else {}
        cfg = AttackConfig(name=name, **extra)
        assert type(cfg) is kind and isinstance(cfg, AttackConfig) and get_attack(name).settings_type is kind
    assert not hasattr(AttackConfig(name="autoattack"), "steps") and not hasattr(AttackConfig(), "version")
    with pytest.raises(UsageError, match=r"attack 'autoattack' takes no 'steps': steps applies to .*pgd.* only"):
        AttackConfig(name="autoattack", steps=5)
    with pytest.raises(UsageError, match=r"config.attacks\[0\]: attack 'pgd' has no setting 'stepz' \(did you mean"):
        from_dict(type(load_eval_config()), {"attacks": [{"name": "pgd", "stepz": 3}]})
    with pytest.raises(UsageError, match="attack 'pgd' takes no 'version'.*use name: autoattack"):
        load_eval_config(None, ["attacks.0.version=standard"])
    # the saved form keeps the flat layout of every key (config.yaml and fingerprints unchanged) and reads back
    cfg = load_eval_config(None, ["attacks.0.name=band-pgd", "attacks.0.band_max_radius=3"])
    saved = to_dict(cfg)["attacks"][0]
    assert list(saved)[:4] == ["name", "norm", "eps", "steps"] and saved["version"] == "rand"
    assert saved["band_max_radius"] == 3.0 and saved["autoattack_iters"] is None
    assert from_dict(type(cfg), to_dict(cfg)) == cfg


def test_validation_returns_a_normalised_copy() -> None:
    from freqpure.attacks.band import BandPGDSettings
    from freqpure.attacks.pgd import BPDASettings

    raw = BPDASettings(gradient="full")
    normalised = get_attack("bpda").validate(raw)
    assert normalised.gradient == "bpda" and raw.gradient == "full" and normalised is not raw
    band = BandPGDSettings(band_max_radius="3")
    checked = get_attack("band-pgd").validate(band)
    assert checked.band_max_radius == 3.0 and band.band_max_radius == "3"
    pgd_cfg = AttackConfig()
    assert get_attack("pgd").validate(pgd_cfg) == pgd_cfg


def test_labels_protocol_texts_and_settings_keys() -> None:
    pgd_cfg = AttackConfig(steps=5, eps=4 / 255, eot=2)
    assert pgd_cfg.display() == "pgd-linf-4/255-full-eot2"
    assert AttackConfig(name="band-pgd", band_max_radius=3).display() == "band-pgd-r3-linf-8/255-full-eot1"
    assert AttackConfig(name="autoattack").display() == "autoattack-rand-linf-8/255-full"
    text = pgd_cfg.protocol_text()
    assert text.startswith("PGD-5 in L∞ (eps 4/255") and "EOT over 2 draw(s)" in text
    key = pgd_cfg.settings_key()
    assert key == AttackConfig(steps=5, eps="4/255", eot=2, label="mine").settings_key()  # labels do not count
    # the default step size is resolved, so an explicit equal one is the same attack
    explicit = max(2.5 * (4 / 255) / 5, 0.4 / 255)
    assert key == AttackConfig(steps=5, eps=4 / 255, eot=2, step_size=explicit).settings_key()
    different = [AttackConfig(steps=20, eps=4 / 255, eot=2), AttackConfig(steps=5, eps=1 / 255, eot=2),
                 AttackConfig(steps=5, eps=4 / 255, eot=4), AttackConfig(steps=5, eps=4 / 255, eot=2, step_size=0.01),
                 AttackConfig(steps=5, eps=4 / 255, eot=2, gradient="bpda"),
                 AttackConfig(steps=5, eps=4 / 255, eot=2, random_start=False),
                 AttackConfig(steps=5, eps=4 / 255, eot=2, keep="last"),
                 AttackConfig(steps=5, eps=4 / 255, eot=2, restarts=2),
                 AttackConfig(name="band-pgd", steps=5, eps=4 / 255, eot=2, band_max_radius=3)]
    keys = {c.settings_key() for c in different}
    assert key not in keys and len(keys) == len(different)
    for field in ("norm=linf", "eps=", "steps=5", "step_size=", "eot=2", "gradient=full",
                  "restarts=1", "random_start=True", "keep=best"):
        assert field in key, field
    assert "band_max_radius" not in key and "None" not in key  # unused settings are left out


def test_official_mismatched_surrogate_is_allowed_only_when_asked(eps_model) -> None:
    base = ["purifier.rounds=20:5*5,50:5*5", "attacks.0.gradient=surrogate", "attacks.0.surrogate_rounds=50:1"]
    with pytest.raises(UsageError, match="surrogate_match: false"):
        load_eval_config(None, base)
    official = ["attacks.0.surrogate_match=false", "attacks.0.random_start=false", "attacks.0.keep=last",
                "attacks.0.step_size=0.007", "attacks.0.steps=200", "attacks.0.eot=20"]
    cfg = load_eval_config(None, base + official)
    a = cfg.attacks[0]
    assert a.display() == "pgd-linf-8/255-surrogate-mismatched-eot20"
    assert "MISMATCHED surrogate 50:1" in a.protocol_text() and "last iterate" in a.protocol_text()
    assert "no random start" in a.protocol_text() and "step 0.007" in a.protocol_text()
    assert "surrogate_match=False" in a.settings_key()
    matched = load_eval_config(None, ["purifier.rounds=20:5*5,50:5*5", "attacks.0.gradient=surrogate",
                                      f"attacks.0.surrogate_rounds={matched_surrogate('20:5*5,50:5*5')}"]).attacks[0]
    assert matched.settings_key() != a.settings_key() and "surrogate_match=True" in matched.settings_key()
    defence = DiffPure(eps_model, rounds="20:5*5,50:5*5")
    surrogate = attack_purifier(defence, "surrogate", "50:1", surrogate_match=False)
    assert [(r.t_star, r.steps) for r in surrogate.rounds] == [(50, 1)]
    with pytest.raises(UsageError, match="surrogate_match=False"):
        attack_purifier(defence, "surrogate", "50:1")


def test_matched_surrogate_keeps_repeats() -> None:
    """``demo --gradient surrogate --rounds 20:5*5,50:5*5`` built '20:1,50:1' (dropped *k) and was refused."""
    assert matched_surrogate("20:5*5,50:5*5") == "20:1*5,50:1*5"
    assert matched_surrogate("100:5") == "100:1"
    assert matched_surrogate("20:5,20:5,50:5") == "20:1*2,50:1"
    from freqpure.config import from_dict  # the flat keys rounds/radius: read as purifier.*
    from freqpure.evaluation.demo import DemoSettings, demo_configs

    settings = from_dict(DemoSettings, dict(gradient="surrogate", rounds="20:5*5,50:5*5", eps=EPS, attack_steps=2,
                                            eot=1, seed=0, batch_size=2, n=2, radius=3, ensemble=1, sweep=False))
    cfgs = demo_configs(settings)
    assert cfgs["freqpure"].attacks[0].surrogate_rounds == "20:1*5,50:1*5"


@dataclass
class _FgsmSettings(AttackSettings):
    """The test attack's typed settings: the shared ones and its own ``steps`` (only 1 makes sense)."""

    name: str = "fgsm-test"
    steps: int = 1


class _Fgsm:
    """A new attack for the test: one signed-gradient step of size eps (FGSM), registered from this file only."""

    name = "fgsm-test"
    settings_type = _FgsmSettings

    def validate(self, cfg: _FgsmSettings) -> _FgsmSettings:
        if cfg.steps != 1:
            raise UsageError("fgsm-test takes steps: 1")
        return cfg

    def label(self, cfg) -> str:
        return f"fgsm-test-{cfg.norm}"

    def protocol_text(self, cfg) -> str:
        return "one signed-gradient step of size eps from the clean image"

    def settings(self, cfg) -> dict:
        return {"norm": cfg.norm, "eps": cfg.eps}

    def build_model(self, defence, cfg):
        return defence.attack_model(cfg)

    def run(self, model, cfg, ctx: AttackContext) -> AttackResult:
        oracle = EOTGradient(model, loss=cfg.loss, seed=ctx.noise)
        loss, grad = oracle(ctx.x, ctx.y)
        x_adv = (ctx.x + cfg.eps * grad.sign()).clamp(0, 1)
        return AttackResult(x_adv, loss, grad.flatten(1).norm(dim=1))


def test_a_new_attack_plugs_in_through_one_registration(tmp_path: Path, classifier) -> None:
    register_attack(_Fgsm())
    try:
        with pytest.raises(UsageError, match="steps: 1"):
            AttackConfig(name="fgsm-test", steps=2)
        with pytest.raises(UsageError, match="attack 'fgsm-test' takes no 'restarts'"):
            AttackConfig(name="fgsm-test", restarts=2)
        assert AttackConfig(name="fgsm-test").saved_dict()["steps"] == 1
        cfg = load_eval_config(None, ["data.n=4", "batch_size=4", "purifier.method=none", "attacks.0.name=fgsm-test",
                                      "attacks.0.steps=1", "sanity.enabled=false",
                                      f"classifier.name={model_name('cifar10-resnet-small')}"])
        res = evaluate(cfg, tmp_path / "run", models=(classifier, None), progress=False)
        assert res.per_attack["fgsm-test-linf"].n == 4
        assert res.protocol["attacks"]["fgsm-test-linf"].startswith("one signed-gradient step")
        assert res.per_attack["fgsm-test-linf"].accuracy <= res.clean.accuracy
    finally:
        _REGISTRY.pop("fgsm-test", None)


# --------------------------------------------------------------------------------------------- stochastic protocol
class _OwnNoiseWrapper(nn.Module):
    """A user's wrapper around a purified classifier that draws its own noise and does not say so."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_eot_needs_a_model_that_takes_noise(classifier, eps_model, images) -> None:
    defended = PurifiedClassifier(classifier, DiffPure(eps_model, t_star=20, steps=1), ensemble=1)
    assert isinstance(defended, StochasticModel) and not isinstance(_OwnNoiseWrapper(defended), StochasticModel)
    oracle = EOTGradient(defended, eot=3, seed=1)  # PurifiedClassifier declares stochastic = True
    assert oracle.eot == 3 and oracle.stochastic
    x, y = images[0][:2], images[1][:2]
    noise = oracle.noise_at(0)
    losses = [nn.functional.cross_entropy(defended(x, noise.select(k, k + 1)), y, reduction="none") for k in range(3)]
    loss, grad = oracle(x, y)
    torch.testing.assert_close(loss, torch.stack(losses).mean(0), rtol=1e-4, atol=1e-5)
    assert not torch.equal(losses[0], losses[1])  # the draws differ
    with pytest.raises(UsageError, match=r"eot=4.*_OwnNoiseWrapper.*stochastic = True.*or use eot=1"):
        EOTGradient(_OwnNoiseWrapper(defended), eot=4)
    with pytest.raises(UsageError, match="stochastic = True"):
        EOTGradient(classifier, eot=2)  # deterministic: EOT > 1 is a mistake, not a silent 1
    assert EOTGradient(classifier, eot=1).eot == 1


@pytest.mark.parametrize("vote", ["majority", "softmax"])
def test_max_batch_never_changes_the_defence(classifier, eps_model, images, vote: str) -> None:
    """Noise is addressed per image and ensemble draw, so chunking (None, 1, 6 images per call) is invisible."""
    x = images[0][:3]
    purifier = FreqPure(eps_model, 3, 3, 0.3, rounds="30:2,20:1")
    outs = []
    for max_batch in (None, 1, 6):
        model = PurifiedClassifier(classifier, purifier, ensemble=3, vote=vote, max_batch=max_batch)
        with torch.no_grad():
            outs.append(model.logits_per_draw(x, StepNoise(4)))
    for other in outs[1:]:
        torch.testing.assert_close(other, outs[0], rtol=1e-5, atol=1e-5)
    assert (outs[0][0] - outs[0][1]).abs().max() > 1e-3  # ensemble draws are independent


# --------------------------------------------------------------------------------------------- band-limited PGD
def test_band_projection_is_an_orthogonal_projection() -> None:
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64)
    p = band_project(d, 3)
    torch.testing.assert_close(band_project(p, 3), p)  # idempotent
    torch.testing.assert_close((d - p).mul(p).sum(), torch.zeros((), dtype=torch.float64), atol=1e-9, rtol=0)
    spectrum = torch.fft.fftshift(torch.fft.fft2(p), dim=(-2, -1)).abs()
    u = torch.arange(32) - 16
    outside = (u[:, None] ** 2 + u[None, :] ** 2).sqrt() > 3
    assert spectrum[..., outside].max() < 1e-9 * spectrum.max()


@pytest.mark.parametrize("norm,eps", [("linf", EPS), ("l2", 0.5)])
def test_band_pgd_stays_in_the_band_and_the_ball(classifier, images, norm: str, eps: float) -> None:
    x, y = images
    assert ((x == 0) | (x == 1)).flatten(1).any(1).sum() >= 4  # real images with saturated pixels
    oracle = EOTGradient(classifier, loss="ce")
    res = pgd(oracle, x, y, norm=norm, eps=eps, steps=5, generator=StepNoise(0).rng(), band_max_radius=3)
    delta = (res.x_adv - x).double()
    size = delta.flatten(1).abs().amax(1) if norm == "linf" else delta.flatten(1).norm(dim=1)
    assert (size <= eps + 1e-6).all() and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert (out_of_band_fraction(delta, 3) < 1e-8).all(), out_of_band_fraction(delta, 3)
    assert (size > 0.3 * eps).all()  # it does move
    plain = pgd(oracle, x, y, norm=norm, eps=eps, steps=5, generator=StepNoise(0).rng())
    assert (out_of_band_fraction((plain.x_adv - x).double(), 3) > 0.1).all()  # the restriction is real
    assert (res.loss > oracle.loss(x, y)).all()  # the band-limited attack still raises the loss of every image


def test_band_constrain_handles_saturated_pixels() -> None:
    x = torch.zeros(1, 3, 32, 32)
    x[..., :16, :] = 1.0  # half the image saturated at 1, half at 0
    d = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 0.1
    out = band_constrain(d, x, "linf", EPS, 3)
    assert out.abs().max() <= EPS + 1e-7 and (x + out).min() >= 0 and (x + out).max() <= 1
    assert out_of_band_fraction(out.double(), 3).item() < 1e-8


def test_band_pgd_runs_in_an_evaluation(tmp_path: Path, classifier) -> None:
    cfg = load_eval_config(None, ["data.n=2", "batch_size=2", "purifier.method=none", "attacks.0.name=band-pgd",
                                  "attacks.0.band_max_radius=2", "attacks.0.steps=2", "sanity.enabled=false",
                                  f"classifier.name={model_name('cifar10-resnet-small')}"])
    res = evaluate(cfg, tmp_path / "run", models=(classifier, None), progress=False)
    label = "band-pgd-r2-linf-8/255-full-eot1"
    assert res.per_attack[label].n == 2
    assert "band-limited PGD" in res.protocol["attacks"][label]
    assert "band_max_radius=2.0" in res.protocol["settings"][label]


# --------------------------------------------------------------------------------------------- AutoAttack
def test_autoattack_sees_the_defences_mean_softmax(classifier, eps_model, images) -> None:
    cfg = load_eval_config(None, ["purifier.rounds=20:1", "defence.ensemble=3", "attacks.0.name=autoattack",
                                  "attacks.0.eot=2"])
    defence = build_defence(cfg, classifier, eps_model)
    model = defence.mean_softmax_model(cfg.attacks[0], draws=2)
    x = images[0][:2].clone().requires_grad_(True)
    noise = StepNoise(9)
    scores = model(x, noise)
    per_draw = model.logits_per_draw(x, noise)
    assert per_draw.shape[0] == 6  # ensemble 3 × 2 EOT draws in one forward
    torch.testing.assert_close(scores, per_draw.softmax(-1).mean(0).log())
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(scores, images[1][:2]), x)
    assert g.abs().sum() > 0
    with torch.no_grad():  # unlike the vote's piecewise-constant shares, the mean softmax moves with x
        d = 1e-3 * torch.ones_like(x)
        assert not torch.equal(model(x + d, noise), model(x, noise))
    text = cfg.attacks[0].protocol_text()
    assert "mean softmax over its ensemble and 2 fresh draw(s)" in text and "eot_iter 1" in text


def test_pyautoattack_is_the_pinned_version_with_the_internals_we_drive(classifier) -> None:
    from importlib.metadata import version

    from freqpure.attacks.autoattack import PYAUTOATTACK_VERSION

    pyproject = (REPO / "pyproject.toml").read_text()
    pins = set(re.findall(r'"pyautoattack==([0-9.]+)"', pyproject))
    assert pins == {PYAUTOATTACK_VERSION}, f"pyproject pins {pins}, the code expects {PYAUTOATTACK_VERSION}"
    assert "pyautoattack>" not in pyproject
    assert version("pyautoattack") == PYAUTOATTACK_VERSION, "installed pyautoattack differs from the pinned version"
    import inspect

    from pyautoattack import AutoAttack

    adversary = AutoAttack(classifier, norm="Linf", eps=EPS, version="rand", seed=0, device=torch.device("cpu"))
    assert adversary.attacks_to_run == ["apgd-ce", "apgd-dlr"] and adversary.apgd.eot_iter == 20
    for name in ("apgd", "apgd_targeted", "fab", "square"):
        assert hasattr(adversary, name), name
    assert callable(adversary.get_seed) and callable(adversary.run_standard_evaluation)
    assert "best_loss" in inspect.signature(adversary.apgd.perturb).parameters
    for attr in ("loss", "seed", "eot_iter"):
        assert hasattr(adversary.apgd, attr), attr
    assert hasattr(adversary.fab, "targeted") and hasattr(adversary.fab, "n_restarts")
    assert hasattr(adversary.square, "seed") and hasattr(adversary.apgd_targeted, "seed")
    assert math.isclose(adversary.epsilon, EPS)
