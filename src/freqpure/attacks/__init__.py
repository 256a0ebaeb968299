"""Adaptive attacks on any classifier ``nn.Module``, purified ones included.

* :func:`pgd` — PGD in L∞ / L2 on a gradient oracle ``loss_and_grad(x, y) -> (loss, grad)``;
* :class:`EOTGradient` — the oracle: EOT-averaged loss and input gradient over K draws, batched;
* :func:`attack_purifier` — gradient modes through a purifier (full, surrogate, adjoint, BPDA);
* :func:`run_autoattack` — AutoAttack standard / rand through ``pyautoattack`` (imported on first use);
* :func:`band_constrain` — keep a perturbation inside a low-frequency band (``pgd(band_max_radius=r)``);
* :mod:`freqpure.attacks.registry` — the :class:`Attack` interface and the registry the evaluation
  dispatches through (``pgd``, ``bpda``, ``band-pgd``, ``autoattack``; :func:`get_attack`).

A model EOT can average over follows :class:`StochasticModel` (``stochastic = True``, ``model(x, noise)``).
"""

from freqpure.attacks.band import band_constrain, band_project, out_of_band_fraction
from freqpure.attacks.eot import DrawNoise, EOTGradient, NoiseSource, StochasticModel, is_stochastic
from freqpure.attacks.gradients import AttackModel, BPDAPurifier, SeededModel, attack_purifier, matched_surrogate
from freqpure.attacks.losses import attack_loss, margin
from freqpure.attacks.pgd import PGDResult, default_step_size, pgd, project, random_start
from freqpure.attacks.registry import Attack, AttackContext, AttackResult, attack_names, get_attack, register_attack
from freqpure.attacks.settings import AttackSettings, attack_settings
from freqpure.attacks.types import GradientMode, Loss, Norm, parse_enum

__all__ = [
    "Attack",
    "AttackContext",
    "AttackResult",
    "AttackSettings",
    "NoiseSource",
    "StochasticModel",
    "attack_names",
    "attack_settings",
    "band_constrain",
    "band_project",
    "get_attack",
    "is_stochastic",
    "matched_surrogate",
    "out_of_band_fraction",
    "register_attack",
    "AttackModel",
    "BPDAPurifier",
    "DrawNoise",
    "EOTGradient",
    "GradientMode",
    "Loss",
    "Norm",
    "PGDResult",
    "SeededModel",
    "attack_loss",
    "attack_purifier",
    "default_step_size",
    "margin",
    "parse_enum",
    "pgd",
    "project",
    "random_start",
    "run_autoattack",
]


def __getattr__(name: str):  # pyautoattack is imported only when asked for
    if name == "run_autoattack":
        from freqpure.attacks.autoattack import run_autoattack

        return run_autoattack
    raise AttributeError(f"module 'freqpure.attacks' has no attribute {name!r}")
