"""The band-limited PGD attack (``name: band-pgd``): PGD-EOT whose perturbation stays in the low-frequency
disc of the spectrum. The projection math is in :mod:`freqpure.attacks.band_projection` (re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from freqpure.attacks.band_projection import band_constrain, band_project, check_band_radius, out_of_band_fraction
from freqpure.attacks.pgd import PGDAttack, PGDSettings, gradient_text
from freqpure.attacks.registry import register_attack
from freqpure.attacks.types import eps_text, parse_number
from freqpure.errors import UsageError

__all__ = ["BandPGDAttack", "BandPGDSettings", "band_project", "band_constrain", "out_of_band_fraction",
           "check_band_radius"]


# ---------------------------------------------------------------------------------------------
# The attack (see freqpure.attacks.registry)
# ---------------------------------------------------------------------------------------------
@dataclass
class BandPGDSettings(PGDSettings):
    """Band-limited PGD's settings: PGD's and ``band_max_radius`` (required; frequency-index units of the
    centred spectrum, fractions accepted)."""

    name: str = "band-pgd"
    band_max_radius: float | str | None = None


class BandPGDAttack(PGDAttack):
    """PGD-EOT whose perturbation stays in the centred-spectrum disc of radius ``band_max_radius``: after
    every step it is projected onto the band, then onto the eps ball, then into [0, 1]
    (:func:`band_constrain`). Same budget as ``pgd`` otherwise, so the two compare directly."""

    name = "band-pgd"
    # band_constrain's alternating projections stop when the whole batch has converged, so a row's
    # perturbation depends (within tol) on its batch: not offered under noise_addressing image-v1.
    per_image = False
    settings_type: type = BandPGDSettings

    def validate(self, cfg: BandPGDSettings) -> BandPGDSettings:
        """A copy of ``cfg`` with its radius checked and as a float; a missing radius is refused."""
        if cfg.band_max_radius is None:
            raise UsageError("attack 'band-pgd' needs band_max_radius (frequency-index units, e.g. 3)")
        radius = parse_number(cfg.band_max_radius, "attack band_max_radius")
        return replace(cfg, band_max_radius=check_band_radius(radius, "attack band_max_radius"))

    def band(self, cfg) -> float | None:
        return float(cfg.band_max_radius)

    def label(self, cfg) -> str:
        return f"{self.name}-r{cfg.band_max_radius:g}-{cfg.norm}-{eps_text(cfg.eps)}-{gradient_text(cfg)}-eot{cfg.eot}"

    def describe(self, cfg) -> str:
        return f"band-limited PGD (perturbation inside the spectrum disc r <= {cfg.band_max_radius:g})"


register_attack(BandPGDAttack())
