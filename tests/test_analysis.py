"""Band damage (freqpure.analysis) on known perturbations and on real CIFAR-10 images, and the analyze outputs."""

from __future__ import annotations

import base64
import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from freqpure.analysis import (
    BandDamage,
    RadialBands,
    band_damage,
    rankdata,
    ratio_summary,
    spearman,
    summarise,
    summarise_cases,
)
from freqpure.spectral import radial_mask
from helpers import one_thread


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _cifar(shared_dir: Path, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    from freqpure.data import eval_subset

    sub = eval_subset(n, seed, data_dir=shared_dir / "data" / "cifar10")
    return sub.x, sub.y


def _sinusoid(h: int, w: int, u: int, v: int, amplitude: float = 0.05) -> torch.Tensor:
    """``amplitude · cos(2π (u·col / w + v·row / h))``, float64 ``[h, w]``: energy at offsets ±(v, u) only."""
    rows = torch.arange(h, dtype=torch.float64)[:, None]
    cols = torch.arange(w, dtype=torch.float64)[None, :]
    return amplitude * torch.cos(2 * math.pi * (u * cols / w + v * rows / h))


class _ImgSrcs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs).get("src"))


def assert_all_images_are_pngs(page: str, minimum: int) -> int:
    """Every <img> has a non-empty base64 PNG data URI that decodes; returns the number of images."""
    parser = _ImgSrcs()
    parser.feed(page)
    assert len(parser.srcs) >= minimum, f"expected at least {minimum} images, found {len(parser.srcs)}"
    prefix = "data:image/png;base64,"
    for i, src in enumerate(parser.srcs):
        assert src and src.startswith(prefix), f"image {i} is not a PNG data URI: {str(src)[:60]!r}"
        data = base64.b64decode(src[len(prefix):], validate=True)
        assert data, f"image {i} has an empty data URI"
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "PNG", f"image {i} decodes as {img.format}"
            img.load()
            assert img.width > 0 and img.height > 0
    return len(parser.srcs)


# ---------------------------------------------------------------------------------------------
# Bands
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(32, 32), (31, 20), (8, 9)])
def test_integer_bands_partition_the_spectrum(size):
    h, w = size
    bands = RadialBands.integer(h, w)
    masks = bands.masks()
    assert masks.shape == (bands.num_bands, h, w)
    assert torch.equal(masks.sum(0), torch.ones(h, w, dtype=torch.long)), "bands must be disjoint and cover all bins"
    assert int(bands.counts().sum()) == h * w
    assert bands.counts()[0] == 1 and masks[0, h // 2, w // 2], "band 0 is the DC bin"
    for radius in (0, 3, 5):
        inside = masks[bands.within(radius)].any(0)
        assert torch.equal(inside, radial_mask(h, w, radius)), "bands k <= R are FreqPure's exchange disc"
    assert bands.within(5.5) == bands.within(5), "a band counts as inside only when all of it is"


def test_band_edges_are_validated():
    with pytest.raises(ValueError, match="strictly increasing"):
        RadialBands(32, 32, (0, 2, 2))
    with pytest.raises(ValueError, match="contain no bin"):
        RadialBands(32, 32, (0, 0.5, 2))
    with pytest.raises(ValueError, match=">= 0"):
        RadialBands(32, 32, (-1, 2))
    custom = RadialBands(32, 32, (2, 8, 23))
    assert custom.num_bands == 3 and int(custom.counts().sum()) == 32 * 32


# ---------------------------------------------------------------------------------------------
# Damage of known perturbations
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("u", "v", "band"), [(0, 12, 12), (5, 7, 9), (3, 15, 16)])
def test_sinusoid_damages_only_its_band(shared_dir, u, v, band):
    clean = _cifar(shared_dir, 6)[0].double()
    x = clean + _sinusoid(32, 32, u, v)
    assert band == math.ceil(math.hypot(u, v))
    d = band_damage(x, clean)
    others = [k for k in range(d.bands.num_bands) if k != band]
    assert float(d.amplitude[:, others].abs().max()) < 1e-9, "amplitude damage outside the sinusoid's band"
    assert float(d.amplitude[:, band].min()) > 1e-3
    assert not torch.isnan(d.phase[:, others]).any(), "real images have non-negligible amplitude in every band"
    assert float(d.phase[:, others].max()) < 1e-9, "phase damage outside the sinusoid's band"
    assert float(d.phase[:, band].min()) > 1e-4


def test_zero_amplitudes_are_guarded():
    """A flat image has zero amplitude off DC: no 0/0 in the amplitude damage, phase undefined there."""
    clean = torch.full((2, 3, 16, 16), 0.5, dtype=torch.float64)
    x = clean + _sinusoid(16, 16, 3, 0)
    d = band_damage(x, clean)
    assert torch.isfinite(d.amplitude).all()
    assert float(d.amplitude[:, [0, 1, 2, 4, 5]].max()) < 1e-9
    assert float(d.amplitude[:, 3].min()) > 1e3, "damage where the clean amplitude is ~0 is huge, not NaN"
    assert float(d.phase[:, 0].max()) == 0.0 and torch.isnan(d.phase[:, 1:]).all()


@pytest.mark.slow
def test_phase_damage_is_circular_distance(shared_dir):
    clean = _cifar(shared_dir, 4)[0].double()
    d = band_damage(1 - clean, 1 - 2 * clean + clean)  # x vs itself (sanity): no damage
    assert float(d.amplitude.abs().max()) == 0.0 and float(torch.nan_to_num(d.phase).max()) == 0.0
    neg = band_damage(-clean, clean)  # F(−x) = −F(x): same amplitude, phase shifted by π everywhere
    assert float(neg.amplitude.max()) < 1e-12
    torch.testing.assert_close(neg.phase, torch.full_like(neg.phase, math.pi), atol=1e-9, rtol=0)
    # A circular shift by s columns changes the phase of offset (v, u) by −2π u s / W (wrapped).
    s = 3
    shifted = band_damage(torch.roll(clean, s, dims=-1), clean)
    u = (torch.arange(32, dtype=torch.float64) - 16)[None, :].expand(32, 32)
    expected = torch.remainder(2 * math.pi * u * s / 32 + math.pi, 2 * math.pi) - math.pi
    masks = RadialBands.integer(32, 32).masks().double()
    per_band = (masks * expected.abs()).flatten(1).sum(1) / masks.flatten(1).sum(1)
    torch.testing.assert_close(shifted.phase, per_band.expand_as(shifted.phase), atol=1e-9, rtol=0)
    assert float(shifted.amplitude.max()) < 1e-9


def test_band_damage_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        band_damage(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 9))
    with pytest.raises(ValueError, match="NaN"):
        band_damage(torch.full((1, 1, 8, 8), math.nan), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        band_damage(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))


# ---------------------------------------------------------------------------------------------
# Summaries and rank correlation
# ---------------------------------------------------------------------------------------------
def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = torch.rand(40, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = summarise(values, n_boot=500, seed=3)
    b = summarise(values, n_boot=500, seed=3)
    c = summarise(values, n_boot=500, seed=4)
    assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)
    assert not torch.equal(a.lower, c.lower)
    torch.testing.assert_close(a.mean, values.mean(0))
    assert bool((a.lower <= a.mean).all() and (a.mean <= a.upper).all())
    normal = summarise(values, method="normal")
    half = 1.959963984540054 * values.std(0) / math.sqrt(40)
    torch.testing.assert_close(normal.upper - normal.mean, half)
    # The two methods agree roughly on 40 uniform values.
    torch.testing.assert_close(a.upper - a.lower, normal.upper - normal.lower, atol=0.05, rtol=0.3)


def test_summaries_skip_undefined_values():
    values = torch.tensor([[1.0, math.nan], [3.0, math.nan], [5.0, 2.0]], dtype=torch.float64)
    s = summarise(values, n_boot=200)
    assert s.n.tolist() == [3, 1]
    assert s.mean.tolist() == [3.0, 2.0]
    assert summarise(values, method="normal").lower[1].isnan(), "one value: no normal interval"
    with pytest.raises(ValueError, match="method"):
        summarise(values, method="exact")


def test_ratio_of_paired_means():
    den = torch.rand(30, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.5
    r = ratio_summary(2 * den, den, n_boot=300)
    torch.testing.assert_close(r.mean, torch.full((4,), 2.0, dtype=torch.float64))
    torch.testing.assert_close(r.lower, r.mean)  # paired resampling: the ratio is 2 in every resample
    torch.testing.assert_close(ratio_summary(2 * den, den, method="normal").upper, r.mean)
    noisy = ratio_summary(den + 0.1 * torch.randn(30, 4, generator=torch.Generator().manual_seed(3)), den)
    assert bool((noisy.lower < noisy.mean).all() and (noisy.mean < noisy.upper).all())


def test_spearman_matches_scipy():
    import scipy.stats as stats  # scipy is in the test extra
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randint(0, 6, (25,), generator=gen).double()  # with ties
        y = torch.randn(25, generator=gen, dtype=torch.float64)
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-12)
    assert rankdata(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert spearman(range(10), [v**3 for v in range(10)]) == pytest.approx(1.0)
    assert spearman([0, 1, 2, 3], [4.0, math.nan, 2.0, 1.0]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))


def test_summarise_cases_structure():
    bands = RadialBands.integer(8, 8)
    gen = torch.Generator().manual_seed(0)
    k = bands.num_bands
    base = torch.rand(10, k, generator=gen, dtype=torch.float64) + torch.arange(k)
    cases = {"adversarial": BandDamage(base, base / 10, bands), "diffpure": BandDamage(base + 1, base, bands),
             "freqpure": BandDamage(base, base / 2, bands)}
    out = summarise_cases(cases, ratios=[("freqpure", "diffpure")], low_radius=2, n_boot=100)
    assert out["cases"]["adversarial"]["amplitude"]["spearman"] == pytest.approx(1.0)
    entry = out["ratios"]["freqpure/diffpure"]
    assert entry["bands"] == [0, 1, 2] and len(entry["amplitude"]["mean"]) == 3
    assert all(m < 1 for m in entry["amplitude"]["mean"]) and entry["phase"]["mean"] == pytest.approx([0.5] * 3)
    json.dumps(out, allow_nan=False)  # JSON-ready, no NaN
    with pytest.raises(ValueError, match="unknown case"):
        summarise_cases(cases, ratios=[("freqpure", "nope")], low_radius=2)


# ---------------------------------------------------------------------------------------------
# Real images: PGD (freqpure.attacks), DiffPure and FreqPure, analyze outputs and report
# ---------------------------------------------------------------------------------------------
def _tiny_classifier(x: torch.Tensor, y: torch.Tensor, seed: int = 0, epochs: int = 3) -> nn.Module:
    """A small CNN fitted for a couple of seconds (about 35% accuracy): enough for a real gradient attack."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 8 * 8, 10))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            b = order[i : i + 64]
            loss = F.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def real_measurement(shared_dir):
    with one_thread():
        return _measure_real(shared_dir)


def _measure_real(shared_dir: Path):
    from freqpure import DiffPure, FreqPure
    from freqpure.data import eval_subset_indices, load_cifar10, to_float
    from freqpure.evaluation.analyze import measure, pgd_attack
    from freqpure.models.adapters import EpsModel
    from freqpure.models.small import SmallUNet

    data_dir = shared_dir / "data" / "cifar10"
    images, labels = load_cifar10("test", data_dir)
    test_idx = eval_subset_indices(labels, 16, seed=0)
    rest = np.setdiff1d(np.arange(len(labels)), test_idx)
    fit_idx = np.random.Generator(np.random.PCG64(1)).permutation(rest)[:2000]
    classifier = _tiny_classifier(to_float(images[fit_idx]), torch.from_numpy(labels[fit_idx].copy()))
    torch.manual_seed(0)
    unet = SmallUNet(base=8, mults=(1, 2), num_res_blocks=1, attn_levels=(), dropout=0.0)
    nn.init.normal_(unet.out_conv.weight, std=0.02)  # a non-trivial (untrained) ε-model
    eps_model = EpsModel(unet.eval().requires_grad_(False), image_size=32, name="tiny-untrained")
    purifiers = {"diffpure": DiffPure(eps_model, t_star=100, steps=5, seed=0),
                 "freqpure": FreqPure(eps_model, 10, 10, 0.3, t_star=100, steps=5, seed=0)}
    x, y = to_float(images[test_idx]), torch.from_numpy(labels[test_idx].copy())
    attack = pgd_attack(classifier, eps=8 / 255, steps=10, step_size=2 / 255, seed=0)
    return measure(x, y, classifier, purifiers, attack, batch_size=8, seed=0)


@pytest.mark.slow
def test_adversarial_damage_rises_with_frequency(real_measurement):
    m = real_measurement
    assert float(m.linf.max()) <= 8 / 255 + 1e-6
    assert m.correct["adversarial"].sum() < m.correct["clean"].sum(), "PGD must lower the accuracy"
    index = list(range(m.damage["adversarial"].bands.num_bands))
    for quantity in ("amplitude", "phase"):
        mean = summarise(getattr(m.damage["adversarial"], quantity), n_boot=200).mean
        rho = spearman(index, mean)
        assert rho >= 0.9, f"adversarial {quantity} damage vs band: Spearman {rho:.3f} < 0.9"


@pytest.mark.slow
def test_freqpure_keeps_the_low_band_amplitude(real_measurement):
    """Paper mode: the output's amplitude inside the exchange radius is the adversarial input's."""
    m = real_measurement
    low = m.damage["freqpure"].bands.within(10)
    torch.testing.assert_close(m.damage["freqpure"].amplitude[:, low], m.damage["adversarial"].amplitude[:, low],
                               atol=2e-4, rtol=2e-3)
    delta = 0.3  # the phase is projected to within δ of the adversarial input's
    assert bool((m.damage["freqpure"].phase[:, low] <= m.damage["adversarial"].phase[:, low] + delta + 1e-4).all())
    assert float(m.damage["diffpure"].amplitude[:, low].mean()) > float(m.damage["freqpure"].amplitude[:, low].mean())


@pytest.mark.slow
def test_analysis_outputs_and_report(real_measurement, tmp_path):
    from freqpure.evaluation.analyze import write_analysis
    from freqpure.report import write_report

    result = write_analysis(tmp_path, real_measurement, settings={"n": 16, "note": "<tiny models>"},
                            low_radius={"amplitude": 10, "phase": 10}, ci={"n_boot": 300, "seed": 0})
    saved = json.loads((tmp_path / "analysis.json").read_text())
    assert saved["format"] == "freqpure-analysis/2"  # 2: settings.all nests the purifier
    assert set(saved["summary"]["cases"]) == {"adversarial", "diffpure", "freqpure"}
    assert saved["targets"]["adversarial_amplitude_spearman"]["pass"] is True
    assert saved["summary"]["ratios"]["freqpure/diffpure"]["amplitude"]["bands"] == list(range(11))
    assert set(result["plots"].values()) == {"analysis_amplitude.png", "analysis_phase.png", "analysis_ratio.png"}
    with np.load(tmp_path / "damage.npz") as npz:
        assert npz["adversarial_amplitude"].shape == (16, 24)
    page = write_report(tmp_path).read_text()
    assert assert_all_images_are_pngs(page, minimum=3) == 3
    assert "&lt;tiny models&gt;" in page and "<tiny models>" not in page


def _save_weights(net: nn.Module, path: Path, kind: str, arch: str, config: dict, **extra: str) -> Path:
    """Weights with freqpure's safetensors metadata, so the registry loads them from a path."""
    from safetensors.torch import save_file

    meta = {"freqpure_kind": kind, "freqpure_arch": arch, "freqpure_config": json.dumps(config), **extra}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata=meta)
    return path


def test_analyze_command_end_to_end(shared_dir, tmp_path, monkeypatch, capsys):
    """``freqpure analyze`` wiring: data subset, registry loading, PGD, both purifiers, outputs, report."""
    from freqpure.cli.main import main
    from freqpure.models.small import FastResNet, SmallUNet

    torch.manual_seed(0)
    clf_cfg = {"widths": [8, 16, 16], "stem": 8}
    unet_cfg = {"base": 8, "mults": [1, 2], "num_res_blocks": 1, "attn_levels": [], "dropout": 0.0}
    clf = _save_weights(FastResNet(**clf_cfg), tmp_path / "clf.safetensors", "classifier", "fast-resnet", clf_cfg)
    unet = _save_weights(SmallUNet(**unet_cfg), tmp_path / "unet.safetensors", "diffusion", "small-unet", unet_cfg,
                         freqpure_eps=json.dumps({"image_size": 32, "channels": 3}))
    monkeypatch.setenv("FREQPURE_DATA", str(shared_dir / "data" / "cifar10"))
    out = tmp_path / "analysis"
    with one_thread():
        code = main(["analyze", "--out", str(out), "--n", "10", "--classifier", str(clf), "--diffusion", str(unet),
                     "--set", "attack_steps=2", "--eps", "4/255", "--rounds", "100:2", "--n-boot", "100",
                     "--device", "cpu", "--no-progress", "--report"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "adversarial_amplitude_spearman" in printed and "report.html" in printed
    saved = json.loads((out / "analysis.json").read_text())
    assert saved["settings"]["attack"]["eps"] == pytest.approx(4 / 255)
    assert saved["settings"]["attack"]["steps"] == 2 and saved["settings"]["noise_scheme"]
    assert saved["settings"]["purifiers"]["freqpure"]["amp_radius"] == 10.0
    assert {c: v["n"] for c, v in saved["summary"]["cases"].items()} == {"adversarial": 10, "diffpure": 10,
                                                                         "freqpure": 10}
    assert saved["accuracy"]["clean"]["n"] == 10 and "torch" in saved["versions"]
    assert assert_all_images_are_pngs((out / "report.html").read_text(), minimum=3) == 3
