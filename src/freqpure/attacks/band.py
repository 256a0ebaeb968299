"""The band-limited PGD attack (``name: band-pgd``): PGD-EOT whose perturbation stays in the low-frequency
disc of the spectrum. The projection math is in :mod:`freqpure.attacks.band_projection` (re-exported here)."""

from __future__ import annotations

from freqpure.attacks.band_projection import band_constrain, band_project, check_band_radius, out_of_band_fraction
from freqpure.attacks.pgd import PGDAttack, gradient_text
from freqpure.attacks.registry import register_attack
from freqpure.attacks.types import eps_text
from freqpure.errors import UsageError

__all__ = ["BandPGDAttack", "band_project", "band_constrain", "out_of_band_fraction", "check_band_radius"]


# ---------------------------------------------------------------------------------------------
# The attack (see freqpure.attacks.registry)
# ---------------------------------------------------------------------------------------------
class BandPGDAttack(PGDAttack):
    """PGD-EOT whose perturbation stays in the centred-spectrum disc of radius ``band_max_radius``: after
    every step it is projected onto the band, then onto the eps ball, then into [0, 1]
    (:func:`band_constrain`). Same budget as ``pgd`` otherwise, so the two compare directly."""

    name = "band-pgd"

    def validate(self, cfg) -> None:
        if cfg.band_max_radius is None:
            raise UsageError("attack 'band-pgd' needs band_max_radius (frequency-index units, e.g. 3)")
        cfg.band_max_radius = check_band_radius(cfg.band_max_radius, "attack band_max_radius")

    def band(self, cfg) -> float | None:
        return float(cfg.band_max_radius)

    def label(self, cfg) -> str:
        return f"{self.name}-r{cfg.band_max_radius:g}-{cfg.norm}-{eps_text(cfg.eps)}-{gradient_text(cfg)}-eot{cfg.eot}"

    def describe(self, cfg) -> str:
        return f"band-limited PGD (perturbation inside the spectrum disc r <= {cfg.band_max_radius:g})"


register_attack(BandPGDAttack())
