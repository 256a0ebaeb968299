"""Spectral operations on real CIFAR-10 images: the properties ASE and PSP promise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from freqpure import spectral as S

DELTA = 0.3


@pytest.fixture(scope="module")
def pair(real_images):
    """(est, ref) in diffusion space: ref = real images, est = other real images plus noise (an x0 guess)."""
    gen = torch.Generator().manual_seed(0)
    ref = real_images.double() * 2 - 1
    est = ref.roll(1, dims=0) * 0.7 + 0.2 * torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    return est, ref


def centred(x):
    return S.centred_spectrum(x)


def test_amplitude_inside_disc_equals_reference(pair):
    est, ref = pair
    out = S.freq_exchange(est, ref, 10, 10, DELTA)
    mask = S.radial_mask(32, 32, 10)
    torch.testing.assert_close(centred(out).abs()[..., mask], centred(ref).abs()[..., mask], rtol=1e-9, atol=1e-9)


def test_phase_inside_disc_within_delta_on_circle(pair):
    est, ref = pair
    out = S.freq_exchange(est, ref, 10, 10, DELTA)
    mask = S.radial_mask(32, 32, 10).clone()
    mask[16, 16] = False  # the DC bin must stay real: covered by test_self_conjugate_bins_keep_a_real_phase
    f_out, f_ref, f_est = centred(out), centred(ref), centred(est)
    dist = S.wrap_phase(f_out.angle() - f_ref.angle()).abs()[..., mask]
    assert float(dist.max()) <= DELTA + 1e-9
    # the projection is not vacuous: many est phases were outside the interval and got moved
    before = S.wrap_phase(f_est.angle() - f_ref.angle()).abs()[..., mask]
    assert float((before > DELTA + 0.1).float().mean()) > 0.3
    # inside the interval the phase is untouched; outside it lands on the boundary
    inside = before <= DELTA
    torch.testing.assert_close(dist[inside], before[inside], rtol=0, atol=1e-9)
    assert torch.allclose(dist[~inside], torch.full_like(dist[~inside], DELTA), atol=1e-9)


def test_frequencies_outside_both_discs_unchanged(pair):
    est, ref = pair
    out = S.freq_exchange(est, ref, 8, 5, DELTA)
    outside = ~(S.radial_mask(32, 32, 8) | S.radial_mask(32, 32, 5))
    torch.testing.assert_close(centred(out)[..., outside], centred(est)[..., outside], rtol=1e-9, atol=1e-9)


def test_different_radii_edit_only_their_own_disc(pair):
    est, ref = pair
    out = S.freq_exchange(est, ref, 4, 9, DELTA)
    ring = S.radial_mask(32, 32, 9) & ~S.radial_mask(32, 32, 4)  # phase projected, amplitude kept
    torch.testing.assert_close(centred(out).abs()[..., ring], centred(est).abs()[..., ring], rtol=1e-9, atol=1e-9)


def test_spectrum_stays_hermitian_output_real(pair):
    est, ref = pair
    spec = S.exchange_spectrum(est, ref, 10, 10, DELTA)
    image = torch.fft.ifft2(spec)
    assert float(image.imag.abs().max()) < 1e-10 * float(image.real.abs().max())


def test_self_conjugate_bins_keep_a_real_phase(pair):
    est, ref = pair
    # est with the opposite mean sign: its DC phase is π away from ref's
    est = est - est.mean(dim=(-2, -1), keepdim=True) - 0.5
    ref = ref - ref.mean(dim=(-2, -1), keepdim=True) + 0.5
    image = torch.fft.ifft2(S.exchange_spectrum(est, ref, None, 10, DELTA))
    assert float(image.imag.abs().max()) < 1e-10
    out = image.real
    assert torch.all(out.mean(dim=(-2, -1)) > 0), "DC phase must be projected to the reference's (positive) sign"


@pytest.mark.parametrize("shape", [(2, 3, 31, 33), (1, 1, 64, 48)])
def test_other_sizes_stay_real(shape):
    gen = torch.Generator().manual_seed(1)
    est, ref = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1 for _ in range(2))
    image = torch.fft.ifft2(S.exchange_spectrum(est, ref, 6, 6, DELTA))
    assert float(image.imag.abs().max()) < 1e-10


def test_batched_equals_per_image(pair):
    est, ref = pair
    batched = S.freq_exchange(est, ref, 10, 10, DELTA)
    single = torch.cat([S.freq_exchange(est[i : i + 1], ref[i : i + 1], 10, 10, DELTA) for i in range(len(est))])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-12)
    ref_mode = S.freq_exchange(est, ref, 10, 10, DELTA, mode="official")
    ref_single = torch.cat(
        [S.freq_exchange(est[i : i + 1], ref[i : i + 1], 10, 10, DELTA, mode="official") for i in range(len(est))]
    )
    torch.testing.assert_close(ref_mode, ref_single, rtol=0, atol=1e-12)


def test_reference_of_batch_one_broadcasts(pair):
    est, ref = pair
    out = S.freq_exchange(est, ref[:1], 10, 10, DELTA)
    torch.testing.assert_close(out, S.freq_exchange(est, ref[:1].expand_as(est), 10, 10, DELTA))


def test_gradients_finite_and_nonzero(pair):
    est, ref = pair
    est = est.float().clone().requires_grad_(True)
    ref = ref.float().clone().requires_grad_(True)
    weights = torch.randn(est.shape, generator=torch.Generator().manual_seed(2))
    for mode in ("paper", "official"):
        est.grad = ref.grad = None
        (S.freq_exchange(est, ref, 10, 10, DELTA, mode=mode) * weights).sum().backward()
        for g in (est.grad, ref.grad):
            assert torch.isfinite(g).all()
            assert float(g.abs().sum()) > 0


def test_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(3)
    est = torch.rand(1, 1, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1
    ref = torch.rand(1, 1, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1
    w = torch.randn(1, 1, 8, 8, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda e, r: (S.freq_exchange(e, r, 2, 3, DELTA) * w).sum(),
                                    (est.requires_grad_(), ref.requires_grad_()))


def test_whole_spectrum_and_zero_delta_returns_reference(pair):
    est, ref = pair
    out = S.freq_exchange(est, ref, 23, 23, 0.0)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


def test_amplitude_exchange_keeps_phase_and_phase_projection_keeps_amplitude(pair):
    est, ref = pair
    mask = S.radial_mask(32, 32, 10)
    ase = S.amplitude_exchange(est, ref, 10)
    assert float(S.wrap_phase(centred(ase).angle() - centred(est).angle()).abs().max()) < 1e-7
    torch.testing.assert_close(centred(ase).abs()[..., mask], centred(ref).abs()[..., mask])
    psp = S.phase_projection(est, ref, 10, DELTA)
    torch.testing.assert_close(centred(psp).abs(), centred(est).abs(), rtol=1e-9, atol=1e-9)


def _official_transcription(x, x0, amp_r, phase_r, delta):
    """Plain transcription of the official FreqPure arithmetic: per image and channel, numpy masks."""
    x = torch.clip((x + 1) / 2 * 255, 0, 255)
    x0 = torch.clip((x0 + 1) / 2 * 255, 0, 255)
    out = torch.zeros(x.shape[0], x.shape[2], x.shape[3], x.shape[1], dtype=x.dtype)
    for b in range(x.shape[0]):
        channels = []
        for c in range(x.shape[1]):
            f_ref = torch.fft.fftshift(torch.fft.fft2(x[b, c]))
            f_est = torch.fft.fftshift(torch.fft.fft2(x0[b, c]))
            amp_ref, phase_ref = torch.abs(f_ref), torch.angle(f_ref) + torch.pi
            amp_est, phase_est = torch.abs(f_est), torch.angle(f_est) + torch.pi
            rows, cols = amp_ref.shape
            u = np.arange(-cols // 2, cols // 2)
            v = np.arange(-rows // 2, rows // 2)
            uu, vv = np.meshgrid(u, v)
            freq = np.sqrt(uu**2 + vv**2)
            low_a = torch.from_numpy(freq <= amp_r)
            low_p = torch.from_numpy(freq <= phase_r)
            amp_est = torch.where(low_a, amp_ref, amp_est)
            phase_est = torch.where(low_p, phase_ref, phase_est)
            phase_est[low_p] = torch.clip(phase_est[low_p], phase_ref[low_p] - delta, phase_ref[low_p] + delta)
            spec = amp_est * torch.exp(1j * (phase_est - torch.pi))
            img = torch.abs(torch.fft.ifft2(torch.fft.ifftshift(spec)))
            channels.append(torch.clip(img, 0, 255) / 255)
        out[b] = torch.stack(channels, dim=2)
    return out.permute(0, 3, 1, 2) * 2 - 1


@pytest.mark.parametrize("radii", [(10, 10), (3, 3), (8, 4)])
def test_official_mode_equals_official_arithmetic(pair, radii):
    est, ref = pair
    ours = S.freq_exchange(est, ref, *radii, DELTA, mode="official")
    theirs = _official_transcription(ref, est, *radii, DELTA)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)


def test_official_mode_with_equal_radii_is_a_low_pass_blend(pair):
    """Field notes §1.2: δ has no effect; the step is IFFT(M·F(ref) + (1−M)·F(x0)) up to abs/clip."""
    est, ref = pair
    est = est.clamp(-1, 1)
    a = S.freq_exchange(est, ref, 10, 10, 0.3, mode="official")
    b = S.freq_exchange(est, ref, 10, 10, 2.0, mode="official")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    mask = S.radial_mask(32, 32, 10)
    blend = torch.fft.ifft2(torch.fft.ifftshift(torch.where(mask, centred(ref), centred(est)), dim=(-2, -1))).real
    differs = (a - blend).abs() > 1e-6
    # where the blend stays inside [-1, 1] the official arithmetic is exactly the blend
    assert float(differs[(blend > -1) & (blend < 1)].float().mean()) == 0.0


def test_paper_and_official_modes_differ(pair):
    est, ref = pair
    paper = S.freq_exchange(est, ref, 10, 10, DELTA)
    official = S.freq_exchange(est, ref, 10, 10, DELTA, mode="official")
    assert float((paper - official).abs().max()) > 0.05


def test_the_old_name_reference_still_means_official(pair):
    """``mode="reference"`` and ``grid="reference"`` were the old names of the official arithmetic and grid."""
    est, ref = pair
    torch.testing.assert_close(S.freq_exchange(est, ref, 8, 4, DELTA, mode="reference"),
                               S.freq_exchange(est, ref, 8, 4, DELTA, mode="official"), rtol=0, atol=0)
    assert S.radial_mask(31, 31, 5, grid="reference") is S.radial_mask(31, 31, 5, grid="official")
    assert not torch.equal(S.radial_mask(31, 31, 5, grid="official"), S.radial_mask(31, 31, 5))  # odd sizes differ
    with pytest.raises(ValueError, match="grid must be 'centred' or 'official'"):
        S.radial_mask(32, 32, 5, grid="fast")


def test_mask_is_cached_and_centred():
    a = S.radial_mask(32, 32, 10)
    assert a is S.radial_mask(32, 32, 10)
    assert bool(a[16, 16]) and bool(a[16, 26]) and not bool(a[16, 27])
    natural = S.radial_mask(32, 32, 10, centred=False)
    assert bool(natural[0, 0]) and torch.equal(torch.fft.fftshift(natural), a)
    assert int(a.sum()) == sum(1 for u in range(-16, 16) for v in range(-16, 16) if math.hypot(u, v) <= 10)


def test_relative_radius():
    assert S.relative_radius(0.5, 32, 32) == 8
    assert S.relative_radius(0.5, 256, 256) == 64
    with pytest.raises(ValueError, match="relative radius"):
        S.relative_radius(1.5, 32, 32)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda e, r: S.freq_exchange(e, r, 30, 10, DELTA), "amp_radius=30 is larger than the 32x32 spectrum"),
        (lambda e, r: S.freq_exchange(e, r, 10, -2, DELTA), "phase_radius must be a finite non-negative"),
        (lambda e, r: S.freq_exchange(e[0], r[0], 10, 10, DELTA), "est must be 4-D"),
        (lambda e, r: S.freq_exchange(e, r[:, :2], 10, 10, DELTA), "ref must have est's shape"),
        (lambda e, r: S.freq_exchange(e, r, 10, 10, -0.1), "delta must be >= 0"),
        (lambda e, r: S.freq_exchange(e, r, 10, 10, DELTA, mode="fast"), "mode must be 'paper' or 'official'"),
        (lambda e, r: S.freq_exchange(e.long(), r, 10, 10, DELTA), "floating point"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(pair, call, match):
    est, ref = pair
    with pytest.raises(ValueError, match=match):
        call(est, ref)
