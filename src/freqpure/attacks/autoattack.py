"""AutoAttack (Croce & Hein, 2020) through the ``pyautoattack`` package (import name ``pyautoattack``).

``version="standard"``: APGD-CE, APGD-T, FAB-T, Square. ``version="rand"`` (for randomised defences):
APGD-CE and APGD-DLR with EOT over 20 draws (``eot_iter``). The attack list always comes from the
version (AutoAttack refuses an attack list together with a version).

AutoAttack decides "robust" from one stochastic forward pass, at two levels: APGD returns the clean
image for every point its own forward did not see misclassified, and ``run_standard_evaluation``
keeps only those successes. For a randomised defence both gates are optimistic. So, given a
``judge`` (the defence's own prediction with its own randomness and vote), :func:`run_autoattack`
runs the version's attacks itself, in AutoAttack's order and with AutoAttack's settings, except that
APGD returns its best-loss iterate for every point (``best_loss=True``, the EOT-averaged loss) and
the ``judge`` decides which points leave the pool before the next attack. Without a judge (a
deterministic model) it is AutoAttack's ``run_standard_evaluation`` unchanged. Either way the caller
judges the returned images once more, one-shot.

What APGD sees of a voting defence (the ``autoattack`` attack of the evaluation, :class:`AutoAttackAttack`):
not the defence's majority vote, whose value (vote shares) is piecewise constant, so APGD's CE/DLR loss
is flat and its best-loss bookkeeping meaningless; and not one draw per forward with AutoAttack's own
``eot_iter`` loop, because APGD then tracks the loss of the *last* EOT draw (its ``loss_indiv``) as the
"best loss", not the average. Instead the model handed to AutoAttack returns the log of the defence's
mean softmax over its ensemble and ``eot`` fresh draws (a :class:`~freqpure.purifiers.PurifiedClassifier`
with ``vote="softmax"`` and ``ensemble × eot`` runs): one forward is already the EOT average, so
``eot_iter`` is 1, the loss APGD keeps is the averaged one, and its gradient is the gradient of the
defence's mean softmax, as for PGD. The defence's own vote decides who leaves the pool and the final
verdict (``judge``).

pyautoattack's internals driven here (the ``apgd``, ``apgd_targeted``, ``fab``, ``square`` attributes,
``attacks_to_run``, ``get_seed`` and ``perturb(..., best_loss=True)``) are pinned by the exact version in
``pyproject.toml`` (:data:`PYAUTOATTACK_VERSION`) and checked by the tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from freqpure.attacks.eot import EOTGradient
from freqpure.attacks.gradients import SeededModel
from freqpure.attacks.pgd import gradient_sentence, gradient_text, surrogate_settings
from freqpure.attacks.registry import AttackContext, AttackResult, Judge, register_attack
from freqpure.attacks.settings import AttackSettings
from freqpure.attacks.types import Norm, eps_text, parse_enum
from freqpure.errors import DependencyError, UsageError
from freqpure.noise import autoattack_model_stream, autoattack_probe_stream, autoattack_seed, autoattack_stage_seed

__all__ = ["run_autoattack", "AutoAttackAttack", "AutoAttackSettings", "AUTOATTACK_VERSIONS", "PYAUTOATTACK_VERSION"]

AUTOATTACK_VERSIONS = ("standard", "rand")
# The pyautoattack release whose internals this module drives (pinned in pyproject.toml).
PYAUTOATTACK_VERSION = "0.2.0"


def _import():
    try:
        from pyautoattack import AutoAttack
    except ImportError as err:  # pragma: no cover - depends on the install
        raise DependencyError("AutoAttack needs the pyautoattack package: pip install 'freqpure[attacks]'") from err
    return AutoAttack


def run_autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: Norm | str,
    eps: float,
    version: str = "rand",
    seed: int = 0,
    eot_iter: int | None = None,
    judge: Judge | None = None,
    batch_size: int | None = None,
    verbose: bool = False,
    n_iter: int | None = None,
) -> Tensor:
    """Adversarial images ``[B, C, H, W]`` in [0, 1] from AutoAttack against ``model(x) -> logits``.

    ``model`` is passed to AutoAttack as is (wrap a noise-taking model in
    :class:`~freqpure.attacks.gradients.SeededModel`); ``eot_iter`` overrides the rand version's 20;
    ``judge(x_adv, y, stage) -> correct`` switches to the judged loop of the module docstring.
    ``n_iter``: iterations (Square: queries) per attack instead of AutoAttack's own (smoke runs only).
    """
    norm = parse_enum(Norm, norm, "norm")
    if version not in AUTOATTACK_VERSIONS:
        raise UsageError(f"unknown AutoAttack version {version!r}; valid: {', '.join(AUTOATTACK_VERSIONS)}")
    AutoAttack = _import()
    adversary = AutoAttack(model, norm=norm.autoattack_name, eps=float(eps), version=version, seed=int(seed),
                           device=x.device)
    if eot_iter is not None:
        if version != "rand":
            raise UsageError("eot_iter applies to AutoAttack's 'rand' version only")
        adversary.apgd.eot_iter = int(eot_iter)
    if n_iter is not None:
        for apgd in (adversary.apgd, adversary.apgd_targeted):
            apgd.n_iter = apgd.n_iter_orig = int(n_iter)
            apgd.n_iter_2, apgd.n_iter_min, apgd.size_decr = (max(int(f * n_iter), 1) for f in (0.22, 0.06, 0.03))
        adversary.fab.n_iter = int(n_iter)
        adversary.square.n_queries = int(n_iter)
    logger = logging.getLogger("auto-attack")
    level = logger.level
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    try:
        if judge is None:
            x_adv, _ = adversary.run_standard_evaluation(x.detach(), y, batch_size=batch_size or x.shape[0])
        else:
            x_adv = _judged(adversary, x.detach(), y, judge)
    finally:
        logger.setLevel(level)
    return x_adv.detach().to(torch.float32)


def _run_one(adversary, name: str, x: Tensor, y: Tensor) -> Tensor:
    """One of AutoAttack's attacks on ``x``, configured as AutoAttack configures it."""
    if name in ("apgd-ce", "apgd-dlr"):
        adversary.apgd.loss = name.split("-")[1]
        adversary.apgd.seed = adversary.get_seed()
        return adversary.apgd.perturb(x, y, best_loss=True)
    if name == "apgd-t":
        adversary.apgd_targeted.seed = adversary.get_seed()
        return adversary.apgd_targeted.perturb(x, y)
    if name in ("fab", "fab-t"):
        adversary.fab.targeted = name == "fab-t"
        if name == "fab-t":
            adversary.fab.n_restarts = 1
        adversary.fab.seed = adversary.get_seed()
        return adversary.fab.perturb(x, y)
    if name == "square":
        adversary.square.seed = adversary.get_seed()
        return adversary.square.perturb(x, y)
    raise UsageError(f"unknown AutoAttack attack {name!r}")


def _judged(adversary, x: Tensor, y: Tensor, judge: Judge) -> Tensor:
    x_adv = x.clone()
    pool = torch.arange(x.shape[0], device=x.device)
    devices = [x.device] if x.device.type == "cuda" else []
    for stage, name in enumerate(adversary.attacks_to_run):
        if pool.numel() == 0:
            break
        # APGD's random start draws from torch's global generator and, with best_loss=True, does not seed
        # it: seed it from the attack's seed (replayable), and restore the caller's state afterwards.
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(autoattack_stage_seed(adversary.get_seed(), stage))
            adv = _run_one(adversary, name, x[pool], y[pool]).detach()
        x_adv[pool] = adv  # still-robust points carry the latest attack's image
        correct = judge(adv, y[pool], stage).to(torch.bool)
        pool = pool[correct]
    return x_adv


# ---------------------------------------------------------------------------------------------
# The attack (see freqpure.attacks.registry)
# ---------------------------------------------------------------------------------------------
@dataclass
class AutoAttackSettings(AttackSettings):
    """AutoAttack's settings: the shared ones (``eot``: draws averaged per forward), the ``version`` (``standard``
    or ``rand``) and ``autoattack_iters``: iterations per attack instead of AutoAttack's own 100 (smoke runs)."""

    name: str = "autoattack"
    version: str = "rand"
    autoattack_iters: int | None = None


class AutoAttackAttack:
    """AutoAttack ``standard`` or ``rand`` against the defence (see the module docstring for what APGD sees)."""

    name = "autoattack"
    settings_type: type = AutoAttackSettings
    # pyautoattack draws each attack's random start for the whole batch from torch's global generator, and the
    # pool between attacks is judged per batch: not offered under noise_addressing image-v1.
    per_image = False

    def validate(self, cfg: AutoAttackSettings) -> AutoAttackSettings:
        """``cfg`` itself once its version and iteration count are checked."""
        if cfg.version not in AUTOATTACK_VERSIONS:
            raise UsageError(f"unknown AutoAttack version {cfg.version!r}; valid: {', '.join(AUTOATTACK_VERSIONS)}")
        if cfg.autoattack_iters is not None and cfg.autoattack_iters < 1:
            raise UsageError(f"autoattack_iters must be >= 1, got {cfg.autoattack_iters}")
        return cfg

    def label(self, cfg) -> str:
        iters = f"-iters{cfg.autoattack_iters}" if cfg.autoattack_iters else ""  # not standard AutoAttack
        return f"autoattack-{cfg.version}-{cfg.norm}-{eps_text(cfg.eps)}-{gradient_text(cfg)}{iters}"

    def settings(self, cfg) -> dict:
        return {"norm": cfg.norm, "eps": float(cfg.eps), "version": cfg.version, "eot": cfg.eot,
                "gradient": cfg.gradient, **surrogate_settings(cfg), "iterations": cfg.autoattack_iters or "default"}

    def protocol_text(self, cfg) -> str:
        return (f"AutoAttack {cfg.version} in its attack order and settings (eps {eps_text(cfg.eps)}); against a "
                f"purifier APGD attacks the log of the defence's mean softmax over its ensemble and {cfg.eot} fresh "
                f"draw(s) per forward (eot_iter 1), following {gradient_sentence(cfg)}, returns its best-loss "
                "iterate for every point, and the defence (own noise and vote) decides who leaves the pool between "
                "attacks; the final images are re-judged by the defence")

    def build_model(self, defence, cfg):
        """``(model for AutoAttack, model for the first-gradient probe or None)``."""
        if defence.purifier is None:
            return defence.model, None
        return defence.mean_softmax_model(cfg, draws=cfg.eot), defence.attack_model(cfg)

    def run(self, model, cfg, ctx: AttackContext) -> AttackResult:
        aa_model, probe = model
        nan = torch.full((ctx.x.shape[0],), float("nan"), device=ctx.x.device)
        grad_norm = nan
        if probe is not None and ctx.check_gradients:
            oracle = EOTGradient(probe, eot=1, loss=cfg.loss, seed=autoattack_probe_stream(ctx.noise))
            grad_norm = oracle(ctx.x, ctx.y)[1].flatten(1).norm(dim=1)
        target = SeededModel(aa_model, autoattack_model_stream(ctx.noise)) if probe is not None else aa_model
        x_adv = run_autoattack(target, ctx.x, ctx.y, norm=cfg.norm, eps=cfg.eps, version=cfg.version,
                               seed=autoattack_seed(ctx.start), eot_iter=1 if cfg.version == "rand" else None,
                               judge=ctx.judge if probe is not None else None, n_iter=cfg.autoattack_iters)
        return AttackResult(x_adv, nan, grad_norm)


register_attack(AutoAttackAttack())
