"""Noise schedules: the discrete linear-β DDPM schedule and its continuous VP-SDE view.

Conventions used throughout freqpure:

* A *step index* ``n`` is an integer in ``0..num_steps-1`` (``x_n = sqrt(ᾱ_n) x_0 + sqrt(1-ᾱ_n) ε``).
* A *noise level* ``t_star`` counts diffusion steps: noising "to t* = 100" means to step index 99,
  as in DiffPure's and guided-diffusion's samplers.
* Continuous VP time ``t ∈ [0, 1]`` maps to step index by ``n = t · (N − 1)`` (score_sde's convention,
  which is also how NCSN++ receives its time label ``t · 999``).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from freqpure.errors import UsageError

__all__ = [
    "LinearBetaSchedule",
    "VPSDE",
    "PurificationRound",
    "parse_rounds",
    "respaced_timesteps",
    "official_timesteps",
    "round_timesteps",
    "GRIDS",
    "validate_timesteps",
]

GRIDS = ("respaced", "official")


@dataclass(frozen=True)
class LinearBetaSchedule:
    """DDPM's linear β schedule (Ho et al. 2020): β_n = linspace(beta_start, beta_end, num_steps)."""

    beta_start: float = 1e-4
    beta_end: float = 2e-2
    num_steps: int = 1000

    def __post_init__(self) -> None:
        if not (0 < self.beta_start < self.beta_end < 1):
            raise UsageError(
                f"need 0 < beta_start < beta_end < 1, got beta_start={self.beta_start}, beta_end={self.beta_end}"
            )
        if self.num_steps < 2:
            raise UsageError(f"num_steps must be >= 2, got {self.num_steps}")

    @cached_property
    def betas(self) -> Tensor:
        """β_n, float64 ``[num_steps]``."""
        return torch.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=torch.float64)

    @cached_property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_n = ∏_{k≤n} (1 − β_k), float64 ``[num_steps]``."""
        return torch.cumprod(1.0 - self.betas, dim=0)

    def alpha_bar(self, steps: Tensor | Sequence[int] | int) -> Tensor:
        """ᾱ at integer step indices; index ``-1`` means the clean data (ᾱ = 1). Float64."""
        idx = torch.as_tensor(steps, dtype=torch.long)
        padded = torch.cat([self.alphas_cumprod, torch.ones(1, dtype=torch.float64)])
        return padded[idx]  # index -1 picks the trailing 1.0

    def to_time(self, steps: Tensor | float) -> Tensor:
        """Step index → continuous VP time ``t = n / (N − 1)``."""
        return torch.as_tensor(steps, dtype=torch.float64) / (self.num_steps - 1)

    def to_step(self, time: Tensor | float) -> Tensor:
        """Continuous VP time → (fractional) step index ``n = t · (N − 1)``."""
        return torch.as_tensor(time, dtype=torch.float64) * (self.num_steps - 1)

    def as_vpsde(self) -> VPSDE:
        """The continuous VP-SDE whose discretisation this schedule is (β(t) = N · β_{t(N−1)})."""
        n = self.num_steps
        return VPSDE(beta_min=self.beta_start * n, beta_max=self.beta_end * n, num_steps=n)


@dataclass(frozen=True)
class VPSDE:
    """Continuous variance-preserving SDE ``dx = −½β(t)x dt + sqrt(β(t)) dw`` with linear β(t).

    ``beta_min=0.1, beta_max=20`` is score_sde's / DiffPure's CIFAR-10 and ImageNet setting and the
    continuous limit of :class:`LinearBetaSchedule` (1e-4 … 2e-2 over 1000 steps).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    num_steps: int = 1000

    def beta(self, t: Tensor) -> Tensor:
        """β(t) for t in [0, 1]."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: Tensor) -> Tensor:
        """log sqrt(ᾱ(t)) = −¼ t² (β_max − β_min) − ½ t β_min."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha_bar(self, t: Tensor) -> Tensor:
        """ᾱ(t) = exp(2 · log_mean_coeff(t))."""
        return torch.exp(2.0 * self.log_mean_coeff(t))

    def marginal_std(self, t: Tensor) -> Tensor:
        """std of x_t given x_0: sqrt(1 − ᾱ(t))."""
        return torch.sqrt(-torch.expm1(2.0 * self.log_mean_coeff(t)))

    def to_step(self, t: Tensor | float) -> Tensor:
        """Continuous time → step index label ``t · (N − 1)`` (NCSN++'s ``time_cond``)."""
        return torch.as_tensor(t) * (self.num_steps - 1)

    def to_time(self, steps: Tensor | float) -> Tensor:
        """Step index → continuous time ``n / (N − 1)``."""
        return torch.as_tensor(steps, dtype=torch.float64) / (self.num_steps - 1)


@dataclass(frozen=True)
class PurificationRound:
    """One round of purification: noise the input to ``t_star`` steps, then denoise in ``steps`` steps."""

    t_star: int
    steps: int

    def __post_init__(self) -> None:
        for value, name in ((self.t_star, "t_star"), (self.steps, "steps")):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise UsageError(f"{name} must be an integer, got {value!r}")
        if not 1 <= self.t_star <= 1000:
            raise UsageError(f"t_star must be in 1..1000 diffusion steps, got {self.t_star}")
        if not 1 <= self.steps <= self.t_star:
            raise UsageError(f"steps must be in 1..t_star={self.t_star}, got {self.steps}")

    def timesteps(self) -> list[int]:
        """Decreasing step indices, from ``t_star − 1`` down to 0 (see :func:`respaced_timesteps`)."""
        return respaced_timesteps(self.t_star, self.steps)


def respaced_timesteps(t_star: int, steps: int) -> list[int]:
    """``steps`` evenly spaced indices from ``t_star − 1`` down to ``0`` (guided-diffusion's respacing).

    >>> respaced_timesteps(20, 5)
    [19, 14, 10, 5, 0]
    """
    if steps < 1 or steps > t_star:
        raise UsageError(f"steps must be in 1..t_star={t_star}, got {steps}")
    if steps == 1:
        return [t_star - 1]
    stride = (t_star - 1) / (steps - 1)
    return sorted({round(i * stride) for i in range(steps)}, reverse=True)


def official_timesteps(t_star: int, steps: int) -> list[int]:
    """The official FreqPure code's grid for ``t_star:steps``: ``t*/n − 1, 2t*/n − 1, …, t* − 1``, decreasing.

    The last step goes from ``t*/n − 1`` to the clean image (ᾱ = 1) instead of ending at step 0. It needs
    ``steps`` to divide ``t_star`` (the official code uses ``t* // n`` as stride and would otherwise run
    more steps than asked, from a level below the one it noised to).

    >>> official_timesteps(20, 5)
    [19, 15, 11, 7, 3]
    """
    if steps < 1 or steps > t_star:
        raise UsageError(f"steps must be in 1..t_star={t_star}, got {steps}")
    if t_star % steps:
        raise UsageError(f"grid 'official' needs steps to divide t_star (the official t*/n grid); got "
                         f"{t_star}:{steps}. Use grid 'respaced' or a divisible plan such as {t_star}:"
                         f"{max(d for d in range(1, steps + 1) if t_star % d == 0)}")
    stride = t_star // steps
    return [k * stride - 1 for k in range(steps, 0, -1)]


def round_timesteps(rnd: PurificationRound, grid: str = "respaced") -> list[int]:
    """Decreasing step indices of one round on ``grid``: ``"respaced"`` (t* − 1 … 0) or ``"official"``."""
    if grid == "respaced":
        return respaced_timesteps(rnd.t_star, rnd.steps)
    if grid == "official":
        return official_timesteps(rnd.t_star, rnd.steps)
    raise UsageError(f"grid must be one of {', '.join(GRIDS)}, got {grid!r}")


def validate_timesteps(timesteps: Sequence[int], num_steps: int = 1000) -> list[int]:
    """Check a reverse schedule: integers in ``0..num_steps−1``, strictly decreasing, non-empty."""
    ts = [int(t) for t in timesteps]
    if not ts:
        raise UsageError("timesteps is empty: need at least one step index")
    if any(t != float(orig) for t, orig in zip(ts, timesteps)):
        raise UsageError(f"timesteps must be integers, got {list(timesteps)}")
    bad = [t for t in ts if not 0 <= t < num_steps]
    if bad:
        raise UsageError(f"timesteps must lie in 0..{num_steps - 1}; out of range: {bad}")
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise UsageError(f"timesteps must be strictly decreasing, got {ts}")
    return ts


MAX_ROUNDS = 10_000  # far beyond any published plan (10 rounds); a bigger repeat is a typo, not a plan


def parse_rounds(spec: str | Sequence[PurificationRound] | Sequence[Sequence[int]]) -> list[PurificationRound]:
    """Parse a multi-round plan.

    Accepts ``"20:5,20:5,50:5"`` (``t_star:steps`` pairs), ``"20x5*5,50x5*5"`` (``t_star x steps``,
    optionally repeated ``*k``), a list of ``(t_star, steps)`` pairs, or a list of rounds.
    """
    if isinstance(spec, str):
        rounds: list[PurificationRound] = []
        for raw in spec.replace(" ", "").split(","):
            if not raw:
                continue
            item, star, repeat = raw.partition("*")
            sep = ":" if ":" in item else "x"
            t_star, _, steps = item.partition(sep)
            form = "expected T:STEPS or T:STEPS*REPEAT with positive integers"
            if not (t_star.isdigit() and steps.isdigit()) or (star and not repeat.isdigit()):
                raise UsageError(f"cannot parse round {raw!r} in {spec!r}: {form}")
            k = int(repeat) if star else 1
            if k < 1:
                raise UsageError(f"round {raw!r} in {spec!r} repeats {k} times: REPEAT must be >= 1")
            if len(rounds) + k > MAX_ROUNDS:
                raise UsageError(f"the plan {spec!r} has more than {MAX_ROUNDS} rounds (round {raw!r} repeats {k} "
                                 "times); a purification plan has a handful of rounds")
            rounds.extend([PurificationRound(int(t_star), int(steps))] * k)
        if not rounds:
            raise UsageError(f"no rounds in {spec!r}")
        return rounds
    if isinstance(spec, PurificationRound) or not isinstance(spec, Sequence):
        raise UsageError(f"rounds must be a plan like '100:20' or a list of (t_star, steps) pairs, got {spec!r}")
    out = []
    for r in spec:
        if isinstance(r, PurificationRound):
            out.append(r)
            continue
        if isinstance(r, str) or not isinstance(r, Sequence) or len(r) != 2:
            raise UsageError(f"each round must be a (t_star, steps) pair, got {r!r}")
        for v, name in zip(r, ("t_star", "steps")):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not float(v).is_integer():
                raise UsageError(f"round {tuple(r)!r}: {name} must be an integer, got {v!r}")
        out.append(PurificationRound(int(r[0]), int(r[1])))
    if not out:
        raise UsageError("no rounds given")
    return out

