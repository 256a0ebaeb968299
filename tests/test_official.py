"""``variant="official"`` equals a plain transcription of the official FreqPure loop.

The transcription below follows the official code (github.com/GaozhengPei/FreqPure, ``purification.py``:
``PurificationForward.forward`` / ``denoising_process`` / ``amplitude_phase_exchange_torch`` and
``ddp_test.py``: ``get_diffusion_params``) statement by statement, with three deliberate changes that
do not alter the arithmetic:

* every ``torch.randn_like`` is replaced by a draw from the same fixed noise source the library uses
  (round ``r``: its forward noise, the noise of its ``k``-th step, the reference noise at step ``t``);
* the ε-model is a tiny deterministic network in float64 that makes its input contiguous (convolution
  rounding depends on memory layout), and the whole loop runs in float64 (the
  official code runs in float32 and casts its exchange output to a float32 buffer; in float64 that
  cast would lose precision, so the buffer takes the input's dtype);
* a model with learned-variance channels (ImageNet) gets its ε channels sliced in the reference call
  too (the official reference call would fail on a 6-channel output).

"Equal" is float64 equality up to 1e-12: the per-image, per-channel loop and freqpure's batched
exchange reach the same values through torch's vectorised and scalar kernels for ``angle``/``exp``,
which may round the last bit differently (most cases are bit-identical); the paper variant differs
from the official loop by more than 1e-3 on the same inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from freqpure.config import PurifierConfig, build_purifier, from_dict, to_dict
from freqpure.errors import UsageError
from freqpure.purifiers import _FORWARD_KEY, _REFERENCE_KEY, DiffPure, FreqPure, resolve_variant
from freqpure.samplers import StepNoise, official_step
from freqpure.schedules import LinearBetaSchedule, PurificationRound, official_timesteps, round_timesteps


class TinyEps(nn.Module):
    """A deterministic ε-model: seeded 3×3 convolution, tanh, a time-dependent gain. float64."""

    def __init__(self, out_channels: int = 3, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(out_channels, 3, 3, 3, generator=gen, dtype=torch.float64) * 0.3,
                                   requires_grad=False)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        gain = 1.0 + 0.5 * torch.sin(t.to(x.dtype) / 37.0).view(-1, 1, 1, 1)
        # contiguous: the convolution's rounding depends on the memory layout, which differs between the
        # loops (the official exchange returns a permuted, channels-last buffer) without changing any value
        return torch.tanh(nn.functional.conv2d(x.contiguous(), self.weight, padding=1)) * gain


# ------------------------------------------------------------------------------------------------
# The transcription of the official loop (do not "simplify": it is meant to read like the original)
# ------------------------------------------------------------------------------------------------
def diff2clf(x):
    return torch.clamp((x / 2) + 0.5, 0, 1)


def clf2diff(x):
    return torch.clamp((x - 0.5) * 2, -1, 1)


def get_diffusion_params(max_timesteps: str, num_denoising_steps: str):
    max_timestep_list = [int(i) for i in max_timesteps.split(",")]
    num_denoising_steps_list = [int(i) for i in num_denoising_steps.split(",")]
    diffusion_steps = []
    for i in range(len(max_timestep_list)):
        diffusion_steps.append([i - 1 for i in range(max_timestep_list[i] // num_denoising_steps_list[i],
                                                     max_timestep_list[i] + 1,
                                                     max_timestep_list[i] // num_denoising_steps_list[i])])
        max_timestep_list[i] = max_timestep_list[i] - 1
    return max_timestep_list, diffusion_steps


class OfficialLoop:
    def __init__(self, diffusion, max_timesteps, num_steps, amplitude_cut_range, phase_cut_range, delta,
                 sampling_method, noise: StepNoise, forward_noise_steps=50, is_imagenet=False):
        self.diffusion = diffusion
        self.betas = torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64)
        self.max_timestep, self.attack_steps = get_diffusion_params(max_timesteps, num_steps)
        self.amplitude_cut_range = amplitude_cut_range
        self.phase_cut_range = phase_cut_range
        self.delta = delta
        self.eta = 0 if sampling_method == "ddim" else 1
        self.forward_noise_steps = forward_noise_steps
        self.is_imagenet = is_imagenet
        self.noise = noise
        self.round_noise = None

    def compute_alpha(self, t):
        beta = torch.cat([torch.zeros(1, dtype=self.betas.dtype), self.betas], dim=0)
        return (1 - beta).cumprod(dim=0).index_select(0, t + 1).view(-1, 1, 1, 1)

    def get_noised_x(self, x, t, e):
        if type(t) == int:  # noqa: E721 (as in the original)
            t = (torch.ones(x.shape[0]) * t).to(x.device).long()
        a = (1 - self.betas).cumprod(dim=0).index_select(0, t).view(-1, 1, 1, 1)
        return x * a.sqrt() + e * (1.0 - a).sqrt()

    def denoising_process(self, ori_x, x, seq):
        n = x.size(0)
        seq_next = [-1] + list(seq[:-1])
        xt = x
        for k, (i, j) in enumerate(zip(reversed(seq), reversed(seq_next))):
            t = torch.ones(n) * i
            next_t = torch.ones(n) * j
            at = self.compute_alpha(t.long())
            at_next = self.compute_alpha(next_t.long())
            et = self.diffusion(xt, t)
            if self.is_imagenet:
                et, _ = torch.split(et, 3, dim=1)
            x0_t = (xt - et * (1 - at).sqrt()) / at.sqrt()
            x0_t = self.amplitude_phase_exchange_torch(ori_x, x0_t, ref_noise=self.round_noise(_REFERENCE_KEY + i, x))
            c1 = self.eta * ((1 - at / at_next) * (1 - at_next) / (1 - at)).sqrt()
            c2 = ((1 - at_next) - c1 ** 2).sqrt()
            xt = at_next.sqrt() * x0_t + c1 * self.round_noise(k, x) + c2 * et
        return xt

    def forward(self, x):
        x_diff = clf2diff(x)
        for i in range(len(self.max_timestep)):
            self.round_noise = self.noise.child(i)
            noised_x = self.get_noised_x(x_diff, self.max_timestep[i], self.round_noise(_FORWARD_KEY, x_diff))
            x_diff = self.denoising_process(x_diff, noised_x, self.attack_steps[i])
        return diff2clf(x_diff)

    def compute_fft(self, image):
        amplitude_channels, phase_channels = [], []
        for channel in range(3):
            fshift = torch.fft.fftshift(torch.fft.fft2(image[channel, :, :]))
            amplitude_channels.append(torch.abs(fshift))
            phase_channels.append(torch.angle(fshift) + torch.pi)
        return amplitude_channels, phase_channels

    @staticmethod
    def _low(shape, cut):
        rows, cols = shape
        u = np.arange(-cols // 2, cols // 2)
        v = np.arange(-rows // 2, rows // 2)
        uu, vv = np.meshgrid(u, v)
        return torch.from_numpy(np.sqrt(uu ** 2 + vv ** 2) <= cut)

    def low_pass_exchange(self, amplitude_channels, amplitude_channels_0_t):
        out = []
        for i in range(3):
            low = self._low(amplitude_channels[i].shape, self.amplitude_cut_range)
            amplitude_channels_0_t[i] = torch.where(low, amplitude_channels[i], amplitude_channels_0_t[i])
            out.append(amplitude_channels_0_t[i])
        return out

    def phase_low_pass_exchange(self, phase_channels, phase_channels_0_t):
        out = []
        for i in range(3):
            low = self._low(phase_channels[i].shape, self.phase_cut_range)
            phase_channels_0_t[i] = torch.where(low, phase_channels[i], phase_channels_0_t[i])
            phase_channels_0_t[i][low] = torch.clip(phase_channels_0_t[i][low], phase_channels[i][low] - self.delta,
                                                    phase_channels[i][low] + self.delta)
            out.append(phase_channels_0_t[i])
        return out

    def reconstruct_image(self, amplitude_channels, phase_channels):
        out = []
        for channel in range(3):
            fshift_filtered = amplitude_channels[channel] * torch.exp(1j * (phase_channels[channel] - torch.pi))
            img = torch.abs(torch.fft.ifft2(torch.fft.ifftshift(fshift_filtered)))
            out.append(torch.clip(img, 0, 255) / 255)
        return torch.stack(out, dim=2)

    def amplitude_phase_exchange_torch(self, x, x_0_t, ref_noise):
        x_t = self.get_noised_x(x, self.forward_noise_steps, ref_noise)
        t = torch.ones(x.size(0)) * self.forward_noise_steps
        at = self.compute_alpha(t.long())
        et = self.diffusion(x_t, t)[:, :3]
        x = (x_t - et * (1 - at).sqrt()) / at.sqrt()
        x = torch.clip((diff2clf(x) * 255), 0, 255)
        x_0_t = torch.clip((diff2clf(x_0_t) * 255), 0, 255)
        batch, channel, height, width = x.shape
        new_x_0_t = torch.zeros(size=(batch, height, width, channel), dtype=x.dtype)
        for batch_idx in range(batch):
            amplitude_channels, phase_channels = self.compute_fft(x[batch_idx])
            amplitude_channels_0_t, phase_channels_0_t = self.compute_fft(x_0_t[batch_idx])
            amp = self.low_pass_exchange(amplitude_channels, amplitude_channels_0_t)
            phase = self.phase_low_pass_exchange(phase_channels, phase_channels_0_t)
            new_x_0_t[batch_idx] = self.reconstruct_image(amp, phase)
        return clf2diff(new_x_0_t.permute(0, 3, 1, 2))


# ------------------------------------------------------------------------------------------------
def assert_same(got: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def images(real_images) -> Tensor:
    return real_images[:3].double().contiguous()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("plan, radius, delta", [(("20,50", "5,5"), 3, 0.3), (("100,20", "5,4"), 10, 0.1)])
def test_official_variant_equals_a_transcription_of_the_official_loop(images, sampler, plan, radius, delta):
    model = TinyEps()
    official = OfficialLoop(model, plan[0], plan[1], radius, radius, delta, sampler, StepNoise(11))
    expected = official.forward(images)
    rounds = ",".join(f"{t}:{n}" for t, n in zip(plan[0].split(","), plan[1].split(",")))
    purifier = FreqPure(model, radius, radius, delta, rounds=rounds, sampler=sampler, variant="official")
    with torch.no_grad():
        got = purifier(images, noise=StepNoise(11))
    assert_same(got.clamp(0, 1), expected)
    # The same through the config path, and the output really depends on the official choices.
    cfg = PurifierConfig(rounds=rounds, sampler=sampler, amp_radius=radius, phase_radius=radius, delta=delta,
                         variant="official")
    with torch.no_grad():
        assert torch.equal(build_purifier(cfg, model)(images, noise=StepNoise(11)), got)
        paper = FreqPure(model, radius, radius, delta, rounds=rounds, sampler=sampler)(images, noise=StepNoise(11))
    assert (paper.clamp(0, 1) - expected).abs().max() > 1e-3


def test_learned_variance_is_dropped_as_in_the_official_imagenet_path(images):
    model = TinyEps(out_channels=6, seed=3)
    official = OfficialLoop(model, "20,20", "5,5", 3, 3, 0.3, "ddpm", StepNoise(5), is_imagenet=True)
    expected = official.forward(images)
    with torch.no_grad():
        got = FreqPure(model, 3, 3, 0.3, rounds="20:5*2", variant="official")(images, noise=StepNoise(5))
        learned = FreqPure(model, 3, 3, 0.3, rounds="20:5*2", variant="official", step_rule="posterior",
                           variance="learned")(images, noise=StepNoise(5))
        fixed = FreqPure(model, 3, 3, 0.3, rounds="20:5*2", variant="official", step_rule="posterior",
                         variance="fixed")(images, noise=StepNoise(5))
    assert_same(got.clamp(0, 1), expected)
    assert not torch.equal(learned, fixed)  # the option reaches the sampler


def test_official_grid_matches_ddp_test():
    for t_star, steps in [(100, 5), (20, 5), (50, 5), (1000, 100), (50, 1), (1000, 1)]:
        _, seqs = get_diffusion_params(str(t_star), str(steps))
        assert official_timesteps(t_star, steps) == sorted(seqs[0], reverse=True)
    assert official_timesteps(100, 5) == [99, 79, 59, 39, 19]
    assert official_timesteps(20, 5) == [19, 15, 11, 7, 3]
    assert round_timesteps(PurificationRound(100, 5), "respaced") == [99, 74, 50, 25, 0]
    with pytest.raises(UsageError, match="steps to divide t_star"):
        official_timesteps(50, 3)
    with pytest.raises(UsageError, match="grid 'official'"):
        FreqPure(TinyEps(), rounds="50:3", variant="official")


def test_official_step_keeps_the_models_eps():
    sched = LinearBetaSchedule()
    a_t, a_s = float(sched.alpha_bar(59)), float(sched.alpha_bar(39))
    gen = torch.Generator().manual_seed(0)
    x0, eps, z = (torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    c1 = ((1 - a_t / a_s) * (1 - a_s) / (1 - a_t)) ** 0.5
    c2 = (1 - a_s - c1**2) ** 0.5
    torch.testing.assert_close(official_step(x0, eps, a_t, a_s, 1.0, z), a_s**0.5 * x0 + c1 * z + c2 * eps,
                               rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(official_step(x0, eps, a_t, a_s, 0.0, None), a_s**0.5 * x0 + (1 - a_s) ** 0.5 * eps,
                               rtol=1e-14, atol=1e-14)
    assert official_step(x0, eps, a_t, 1.0, 1.0, z) is x0
    with pytest.raises(UsageError, match="needs noise"):
        official_step(x0, eps, a_t, a_s, 1.0, None)


def test_each_official_option_changes_the_output_alone(images):
    model = TinyEps()
    with torch.no_grad():
        base = FreqPure(model, 3, 3, 0.3, rounds="20:5,50:5")(images, noise=StepNoise(2))
        for key, value in [("step_rule", "official"), ("grid", "official"), ("reference", "round-denoised"),
                           ("mode", "official")]:
            other = FreqPure(model, 3, 3, 0.3, rounds="20:5,50:5", **{key: value})(images, noise=StepNoise(2))
            assert (other - base).abs().max() > 1e-4, key


def test_round_denoised_equals_denoised_recomputed_every_step(images):
    model = TinyEps()
    with torch.no_grad():
        a = FreqPure(model, 3, 3, 0.3, rounds="20:5,50:5", reference="round-denoised")(images, noise=StepNoise(4))
        b = FreqPure(model, 3, 3, 0.3, rounds="20:5,50:5", reference="denoised",
                     recompute_reference=True)(images, noise=StepNoise(4))
        c = FreqPure(model, 3, 3, 0.3, rounds="20:5,50:5", reference="denoised")(images, noise=StepNoise(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_surrogate_keeps_the_variant(images):
    model = TinyEps()
    purifier = FreqPure(model, 3, 3, 0.3, rounds="20:5*2,50:5*2", variant="official")
    surrogate = purifier.with_rounds("50:1")
    assert (surrogate.step_rule, surrogate.grid, surrogate.reference, surrogate.mode) == \
        ("official", "official", "round-denoised", "official")
    official = OfficialLoop(model, "50", "1", 3, 3, 0.3, "ddpm", StepNoise(9))
    with torch.no_grad():
        assert_same(surrogate(images, noise=StepNoise(9)).clamp(0, 1), official.forward(images))


def test_variant_precedence_and_canonical_config():
    assert resolve_variant("official", step_rule=None, grid="respaced") == {"step_rule": "official",
                                                                             "grid": "respaced"}
    # explicit keys override the preset and are kept; keys equal to the preset are stored as null
    cfg = PurifierConfig(variant="official", mode="official", step_rule="posterior")
    assert cfg.mode is None and cfg.step_rule == "posterior"
    assert cfg.effective() == {"mode": "official", "reference": "round-denoised", "step_rule": "posterior",
                               "grid": "official", "variance": "fixed"}
    # mode: reference is the old spelling of mode: official (reference: is the reference image)
    assert PurifierConfig(variant="official", mode="reference", step_rule="posterior") == cfg
    ablation = from_dict(PurifierConfig, {"variant": "paper", "mode": "reference"})
    assert ablation.mode == "official" and to_dict(ablation)["mode"] == "official"
    assert resolve_variant("paper", mode="reference") == {"mode": "official"}
    # an old saved config (mode: paper, reference: input, no variant) reads back as today's default
    old = from_dict(PurifierConfig, {"mode": "paper", "reference": "input", "rounds": "100:5"})
    assert to_dict(old) == to_dict(PurifierConfig(rounds="100:5"))
    for bad, match in [({"variant": "offical"}, "variant must be one of"), ({"grid": "x"}, "grid must be"),
                       ({"step_rule": "ddim"}, "step_rule must be")]:
        with pytest.raises(UsageError, match=match):
            PurifierConfig(**bad)
    with pytest.raises(UsageError, match="sampler 'sde'"):
        DiffPure(TinyEps(), rounds="100:5", sampler="sde", variant="official")
    with pytest.raises(UsageError, match="variance 'learned' needs step_rule 'posterior'"):
        FreqPure(TinyEps(), rounds="100:5", variant="official", variance="learned")
