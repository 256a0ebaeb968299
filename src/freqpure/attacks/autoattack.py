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
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor, nn

from freqpure.attacks.types import Norm, parse_enum
from freqpure.errors import UsageError

__all__ = ["run_autoattack", "AUTOATTACK_VERSIONS"]

AUTOATTACK_VERSIONS = ("standard", "rand")

Judge = Callable[[Tensor, Tensor, int], Tensor]  # (x_adv [k,C,H,W], y [k], stage) -> correct [k] bool


def _import():
    try:
        from pyautoattack import AutoAttack
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("AutoAttack needs the pyautoattack package: pip install 'freqpure[attacks]'") from err
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
            torch.manual_seed(int(adversary.get_seed()) + stage)
            adv = _run_one(adversary, name, x[pool], y[pool]).detach()
        x_adv[pool] = adv  # still-robust points carry the latest attack's image
        correct = judge(adv, y[pool], stage).to(torch.bool)
        pool = pool[correct]
    return x_adv
