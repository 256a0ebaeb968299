"""FreqPure purification speed: freqpure against the official code's structure, same ε-model and settings.

The baseline re-implements the *structure* of the official FreqPure purification step (field notes
§1.6): at every step the reference is re-noised to step 50 and denoised with one extra ε-model call,
then a Python loop over images and channels computes FFTs, rebuilds the numpy low-frequency masks,
writes the result into a CPU tensor and moves it back. freqpure computes the reference once per run,
caches masks and edits the whole batch in one vectorised call.

    python benchmarks/purify_speed.py --steps 100 --batch 16

Prints a table (seconds per image) and the speed-up ratio, plus the frequency ops' share of the
ε-model time.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

import freqpure
from freqpure.samplers import StepNoise, add_noise, predict_x0, reverse_step
from freqpure.schedules import LinearBetaSchedule, respaced_timesteps
from freqpure.spectral import freq_exchange


class OfficialStructure:
    """The official code's per-step work, written out with its loops (used only as a timing baseline)."""

    def __init__(self, eps_model, amp_radius: float, phase_radius: float, delta: float, reference_t: int = 50):
        self.eps_model = eps_model
        self.amp_radius, self.phase_radius, self.delta = amp_radius, phase_radius, delta
        self.reference_t = reference_t
        self.schedule = LinearBetaSchedule()

    def _mask(self, rows: int, cols: int, radius: float, device) -> torch.Tensor:
        u = np.arange(-cols // 2, cols // 2)
        v = np.arange(-rows // 2, rows // 2)
        uu, vv = np.meshgrid(u, v)
        return torch.from_numpy(np.sqrt(uu**2 + vv**2) <= radius).to(device)

    def _exchange(self, ref: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        device = x0.device
        ref = torch.clip((ref + 1) / 2 * 255, 0, 255)
        x0 = torch.clip((x0 + 1) / 2 * 255, 0, 255)
        batch, channels, height, width = x0.shape
        out = torch.zeros(batch, height, width, channels)
        for b in range(batch):
            rebuilt = []
            for c in range(channels):
                f_ref = torch.fft.fftshift(torch.fft.fft2(ref[b, c]))
                f_est = torch.fft.fftshift(torch.fft.fft2(x0[b, c]))
                amp_ref, phase_ref = f_ref.abs(), f_ref.angle() + math.pi
                amp_est, phase_est = f_est.abs(), f_est.angle() + math.pi
                low_a = self._mask(height, width, self.amp_radius, device)
                amp_est = torch.where(low_a, amp_ref, amp_est)
                low_p = self._mask(height, width, self.phase_radius, device)
                phase_est = torch.where(low_p, phase_ref, phase_est)
                phase_est[low_p] = torch.clip(phase_est[low_p], phase_ref[low_p] - self.delta,
                                              phase_ref[low_p] + self.delta)
                spec = amp_est * torch.exp(1j * (phase_est - math.pi))
                img = torch.fft.ifft2(torch.fft.ifftshift(spec)).abs()
                rebuilt.append(torch.clip(img, 0, 255) / 255)
            out[b] = torch.stack(rebuilt, dim=2).cpu()
        return out.permute(0, 3, 1, 2).to(device) * 2 - 1

    def __call__(self, x: torch.Tensor, t_start: int, steps: int, noise: StepNoise) -> torch.Tensor:
        x_in = x * 2 - 1
        ts = respaced_timesteps(t_start, steps)
        alpha_bars = self.schedule.alpha_bar(ts + [-1]).tolist()
        x_t = add_noise(x_in, alpha_bars[0], noise(-1, x_in))
        a_ref = float(self.schedule.alpha_bar(self.reference_t))
        for i, t in enumerate(ts):
            eps = self.eps_model(x_t, torch.full((len(x),), float(t)))
            x0 = predict_x0(x_t, eps, torch.tensor(alpha_bars[i]))
            ref_t = add_noise(x_in, a_ref, noise(10_000 + i, x_in))  # reference re-denoised at every step
            ref_eps = self.eps_model(ref_t, torch.full((len(x),), float(self.reference_t)))
            ref = (ref_t - math.sqrt(1 - a_ref) * ref_eps) / math.sqrt(a_ref)
            x0 = self._exchange(ref, x0)
            eps = (x_t - math.sqrt(alpha_bars[i]) * x0) / math.sqrt(1 - alpha_bars[i])
            z = noise(i, x_t) if alpha_bars[i + 1] < 1 else None
            x_t = reverse_step(x_t, x0, eps, alpha_bars[i], alpha_bars[i + 1], 1.0, z)
        return (x_t + 1) / 2


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cifar10-ddpm-small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--t-star", "--t-start", dest="t_star", type=int, default=1000,
                        help="cifar10.sh: from t = 1000 (--t-start: the old spelling)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--radius", type=float, default=10)
    parser.add_argument("--delta", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    eps_model = freqpure.load_diffusion(args.model)
    size = eps_model.image_size
    x = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    r, d = args.radius, args.delta
    ours = freqpure.FreqPure(eps_model, r, r, d, t_star=args.t_star, steps=args.steps)
    ours_official_cost = freqpure.FreqPure(eps_model, r, r, d, t_star=args.t_star, steps=args.steps,
                                           reference="denoised", recompute_reference=True, mode="official")
    baseline = OfficialStructure(eps_model, r, r, d)

    with torch.no_grad():
        rows = {
            "official structure (loops, re-denoised reference)": timed(
                lambda: baseline(x, args.t_star, args.steps, StepNoise(0)), args.repeats),
            "freqpure, reference recomputed every step": timed(
                lambda: ours_official_cost(x, StepNoise(0)), args.repeats),
            "freqpure, reference once per run (default)": timed(lambda: ours(x, StepNoise(0)), args.repeats),
        }
        t_vec = torch.full((args.batch,), 500.0)
        x_diff = x * 2 - 1
        unet = timed(lambda: eps_model(x_diff, t_vec), 5 * args.repeats)
        fft_ours = timed(lambda: freq_exchange(x_diff, x_diff.flip(0), r, r, d), 20 * args.repeats)
        fft_loop = timed(lambda: baseline._exchange(x_diff, x_diff.flip(0)), 5 * args.repeats)

    print(f"model {args.model}, batch {args.batch}, t* {args.t_star}, {args.steps} steps, r {r}, delta {d}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| purification | s / image | speed-up vs official structure |")
    print("|---|---|---|")
    base = rows["official structure (loops, re-denoised reference)"]
    for name, seconds in rows.items():
        print(f"| {name} | {seconds / args.batch:.4f} | {base / seconds:.2f}x |")
    print()
    print("| per-step op (whole batch) | ms | share of one eps-model call |")
    print("|---|---|---|")
    print(f"| eps-model forward | {unet * 1e3:.2f} | 100% |")
    print(f"| freqpure freq_exchange (vectorised, cached masks) | {fft_ours * 1e3:.3f} | {fft_ours / unet:.1%} |")
    print(f"| official-structure exchange (loops, masks per call) | {fft_loop * 1e3:.2f} | {fft_loop / unet:.1%} |")
    ratio = base / rows["freqpure, reference once per run (default)"]
    print(f"\nspeed-up at this setting: {ratio:.2f}x (target >= 2x); "
          f"frequency ops {fft_ours / unet:.1%} of the eps-model time (target <= 5%)")


if __name__ == "__main__":
    main()
