"""Adjoint gradients through the reverse VP-SDE (DiffPure's way): ``torchsde.sdeint_adjoint``.

:class:`AdjointSDEPurifier` runs the same process as a purifier with ``sampler="sde"`` — forward
noising, then Euler–Maruyama on the reverse VP-SDE, round after round, with the purifier's x0 hook
(FreqPure's frequency exchange); each round starts from the purifier's own public steps
(:meth:`~freqpure.purifiers.Purifier.round_noise`, :meth:`~freqpure.purifiers.Purifier.diffuse`) — but
integrates each round with ``torchsde.sdeint_adjoint``: the
backward pass solves the adjoint SDE instead of storing the chain, so memory is flat in the steps.

Details that matter:

* Time runs in *step units* ``s ∈ [0, steps]`` with ``dt = 1`` (drift and diffusion rescaled by the
  VP step ``h``), so every solver time is an exact integer and the solver takes exactly ``steps`` steps.
* By default the state at every step is kept (``store_states``), so the backward solve restarts each
  step from the exact forward state instead of reconstructing it by integrating backward (which is
  unstable under FreqPure's frequency exchange: the forward step contracts, its reversal expands).
* The Brownian increments over ``[i, i+1]`` are the purifier's own noise draws ``noise(i, x)``
  (:class:`_StepBrownian`): with the same :class:`~freqpure.samplers.StepNoise` the forward pass equals
  ``sample_vpsde_euler``'s, and the adjoint replays the very same path.
* ``adjoint_params`` are only the tensors the x0 hook reads (the round input and the attacked image),
  never the model parameters (torchsde's default would integrate a gradient for every weight).
* The adjoint is the continuous adjoint discretised backward in time, not the exact gradient of the
  discrete chain: it reconstructs the states by integrating backward and evaluates every step at its
  right end (for the last step t = 0, where the score is singular, at t = h instead). The diffusion
  ``sqrt(β)`` does not depend on the state, so torchsde's Milstein correction terms vanish.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from freqpure.errors import DependencyError, UsageError
from freqpure.purifiers import Purifier
from freqpure.samplers import EpsFn, NoiseFn, X0Hook, vpsde_reverse_drift
from freqpure.schedules import VPSDE

__all__ = ["AdjointSDEPurifier", "sdeint_vpsde_adjoint"]


def _torchsde():
    try:
        import torchsde
    except ImportError as err:  # pragma: no cover - depends on the install
        raise DependencyError("gradient mode 'adjoint' needs torchsde: pip install 'freqpure[attacks]'") from err
    return torchsde


def _step_brownian(noise: NoiseFn, like: Tensor):
    """A torchsde Brownian motion on integer times whose increment over ``[i, i+1]`` is ``noise(i, like)``."""
    torchsde = _torchsde()

    class StepBrownian(torchsde.BaseBrownian):
        def __init__(self) -> None:
            self._shape = (like.shape[0], like[0].numel())

        def __call__(self, ta, tb=None, return_U=False, return_A=False):  # noqa: N803 - torchsde's names
            if tb is None or return_U or return_A:
                raise UsageError("StepBrownian only gives increments over [i, i+1] (use method='euler')")
            i = int(round(float(ta)))
            if abs(float(tb) - float(ta) - 1.0) > 1e-4 or abs(float(ta) - i) > 1e-4:
                raise UsageError(f"StepBrownian needs unit steps on integer times, got [{float(ta)}, {float(tb)}]")
            return noise(i, like).reshape(self._shape)

        def __repr__(self) -> str:
            return f"StepBrownian(shape={self._shape})"

        @property
        def dtype(self):
            return like.dtype

        @property
        def device(self):
            return like.device

        @property
        def shape(self):
            return self._shape

        @property
        def levy_area_approximation(self):
            return "none"

    return StepBrownian()


class _ReverseVPSDE(nn.Module):
    """The reverse VP-SDE from ``t_start`` to 0 in step units: ``dy = −f_rev(y, t) h ds + sqrt(β(t) h) dW_s``."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, eps_model: EpsFn, sde: VPSDE, t_start: float, steps: int, shape: torch.Size,
                 hook_factory: Callable[..., X0Hook | None] | None, hook_inputs: tuple[Tensor, ...]) -> None:
        super().__init__()
        self.eps_model = eps_model
        self.sde = sde
        self.t_start = t_start
        self.h = t_start / steps
        self.shape = shape
        self.hook_factory = hook_factory
        self.hook_inputs = hook_inputs

    def _time(self, s: Tensor) -> float:
        # The forward solve evaluates the left end of every step (t >= h); the adjoint solve evaluates the
        # right end, which for the last step is t = 0, where the score is singular: use t = h there.
        return max(self.t_start - float(s) * self.h, self.h)

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        x = y.view(self.shape)
        hook = self.hook_factory(*self.hook_inputs) if self.hook_factory is not None else None
        drift = vpsde_reverse_drift(self.eps_model, self.sde, x, self._time(s), hook)
        return (-drift * self.h).flatten(1)

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        beta = float(self.sde.beta(torch.tensor(self._time(s), dtype=torch.float64)))
        return torch.full_like(y, (beta * self.h) ** 0.5)


def sdeint_vpsde_adjoint(
    eps_model: EpsFn,
    x: Tensor,
    t_start: float,
    steps: int,
    sde: VPSDE,
    *,
    noise: NoiseFn,
    hook_factory: Callable[..., X0Hook | None] | None = None,
    hook_inputs: tuple[Tensor, ...] = (),
    store_states: bool = True,
) -> Tensor:
    """Reverse VP-SDE from ``t_start`` to 0 in ``steps`` Euler–Maruyama steps, adjoint gradients.

    ``x`` ``[B, C, H, W]`` at time ``t_start`` (diffusion space) → sample at time 0. The x0 hook is
    rebuilt inside every drift evaluation as ``hook_factory(*hook_inputs)``, so that its gradient with
    respect to ``hook_inputs`` flows through the adjoint (they are passed as ``adjoint_params``).

    ``store_states``: keep the state at every step (``[steps+1, B, C·H·W]``, as much as per-step
    checkpointing keeps) so the adjoint restarts every step from the exact forward state; ``False``
    keeps only the end points and reconstructs the states by integrating backward (DiffPure's
    setting), which drifts when the x0 hook contracts the state (FreqPure's exchange does).
    """
    torchsde = _torchsde()
    if steps < 1:
        raise UsageError(f"steps must be >= 1, got {steps}")
    func = _ReverseVPSDE(eps_model, sde, t_start, steps, x.shape, hook_factory, hook_inputs)
    if store_states:
        ts = torch.arange(steps + 1, dtype=x.dtype, device=x.device)
    else:
        ts = torch.tensor([0.0, float(steps)], dtype=x.dtype, device=x.device)
    params = tuple(t for t in hook_inputs if t.requires_grad)
    ys = torchsde.sdeint_adjoint(
        func, x.flatten(1), ts, bm=_step_brownian(noise, x), method="euler", dt=1.0, adjoint_params=params
    )
    return ys[-1].view(x.shape)


class AdjointSDEPurifier(nn.Module):
    """``purifier``'s process (``sampler="sde"``) with gradients from the stochastic adjoint.

    ``forward(x [B,C,H,W] in [0,1], noise) -> [B,C,H,W]`` (classifier space, unclamped); with the same
    ``noise`` its output equals ``purifier(x, noise)`` up to float rounding.
    """

    def __init__(self, purifier: Purifier, *, store_states: bool = True) -> None:
        super().__init__()
        self.store_states = store_states
        if getattr(purifier, "sampler", None) != "sde":
            raise UsageError(
                "gradient mode 'adjoint' needs a purifier with sampler='sde' (the VP-SDE); this one uses "
                f"sampler={getattr(purifier, 'sampler', None)!r}: set purifier.sampler=sde or use full/surrogate"
            )
        self.purifier = purifier

    def forward(self, x: Tensor, noise=None) -> Tensor:
        p = self.purifier
        x = p.validate(x)
        noise = noise if noise is not None else p.new_noise()
        sde = p.schedule.as_vpsde()
        has_hook = type(p).make_x0_hook is not Purifier.make_x0_hook
        x_input = x * 2 - 1
        x_diff = x_input
        for r, rnd in enumerate(p.rounds):  # the purifier's own rounds: its noise streams and forward noising
            round_noise = p.round_noise(noise, r)
            t_cont = p.vp_time(rnd)
            x_t = p.diffuse(x_diff, rnd, round_noise)

            # The hook reads the round input and the attacked image; in round 0 they are one tensor, which
            # must then be passed once (a tensor listed twice in adjoint_params gets its gradient twice).
            if r == 0:
                inputs: tuple[Tensor, ...] = (x_input,)

                def factory(x_in: Tensor, _noise=round_noise) -> X0Hook | None:
                    return p.make_x0_hook(x_in, x_in, _noise)
            else:
                inputs = (x_diff, x_input)

                def factory(x_round: Tensor, x_in: Tensor, _noise=round_noise) -> X0Hook | None:
                    return p.make_x0_hook(x_round, x_in, _noise)

            x_diff = sdeint_vpsde_adjoint(
                getattr(p, "eps", p.eps_model), x_t, t_cont, rnd.steps, sde, noise=round_noise,
                hook_factory=factory if has_hook else None, hook_inputs=inputs if has_hook else (),
                store_states=self.store_states,
            )
        return (x_diff + 1) / 2
