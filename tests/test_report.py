"""The HTML report (freqpure.report, ``freqpure report``) on run and demo dirs made from real data.

The demo dir is built here from real CIFAR-10 test images: a small CNN and a small diffusion UNet
trained for a few seconds on other CIFAR-10 test images, a real PGD attack from
:mod:`freqpure.attacks` (through the purifier, full gradients), and real DiffPure / FreqPure
purification. The page is then rendered in headless Chromium (Debian's ``chromium`` package).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn

from freqpure.report import metric_rows, write_report
from helpers import one_thread

N_IMAGES = 8
DEFENCES = ("none", "diffpure", "freqpure")
CHROMIUM_INSTALL = "apt-get install -y chromium"


# ---------------------------------------------------------------------------------------------
# Building a demo dir from real data
# ---------------------------------------------------------------------------------------------
def _wilson(k: int, n: int, z: float = 1.959963984540054) -> list[float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [centre - half, centre + half]


def _fit_classifier(x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 8 * 8, 10))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            b = order[i : i + 64]
            loss = F.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval().requires_grad_(False)


def _fit_unet(x: torch.Tensor, steps: int = 60) -> nn.Module:
    """A small ε-prediction UNet fitted for a few seconds on noise levels t < 300 (the purification range)."""
    from freqpure.models.adapters import EpsModel
    from freqpure.models.small import SmallUNet
    from freqpure.schedules import LinearBetaSchedule

    torch.manual_seed(0)
    net = SmallUNet(base=8, mults=(1, 2), num_res_blocks=1, attn_levels=(), dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(0)
    alpha_bar = LinearBetaSchedule().alphas_cumprod.float()
    for _ in range(steps):
        x0 = x[torch.randint(0, len(x), (16,), generator=gen)] * 2 - 1
        t = torch.randint(0, 300, (16,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alpha_bar[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t.float()), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return EpsModel(net.eval().requires_grad_(False), image_size=32, name="tiny-test-unet")


def _grid_png(rows: list[np.ndarray]) -> Image.Image:
    """Rows of ``[N, 3, 32, 32]`` images → one RGB grid (the demo's grid.png)."""
    tiles = [np.concatenate(list(r.transpose(0, 2, 3, 1)), axis=1) for r in rows]
    return Image.fromarray((np.concatenate(tiles, axis=0) * 255).round().astype(np.uint8)).resize((8 * 96, 3 * 96))


def _write_run(run: Path, name: str, examples: dict[str, np.ndarray], config: dict, seconds: float) -> dict:
    from freqpure.provenance import environment

    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    y = examples["labels"]
    k_clean = int((examples["pred_clean"] == y).sum())
    k_adv = int((examples["pred_adversarial"] == y).sum())
    n = len(y)
    results = {
        "defence": name,
        "clean_accuracy": {"accuracy": k_clean / n, "ci95": _wilson(k_clean, n), "correct": k_clean},
        "robust_accuracy": {"accuracy": k_adv / n, "ci95": _wilson(k_adv, n), "correct": k_adv},
        "n": n,
        "seed": 0,
        "protocol": "one-shot; single purification run; PGD-linf 8/255, 3 steps, full gradients",
        "versions": environment("cpu"),
        "timings": {"total_s": round(seconds, 3)},
    }
    (run / "results.json").write_text(json.dumps(results, indent=2))
    (run / "results.md").write_text(
        f"| defence | clean | robust |\n|---|---|---|\n| {name} | {k_clean}/{n} | {k_adv}/{n} |\n")
    with open(run / "samples.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"index": i, "label": int(y[i]), "pred_clean": int(examples["pred_clean"][i]),
                                "pred_adversarial": int(examples["pred_adversarial"][i]), "eot_preds": [1, 2]}) + "\n")
    np.savez(run / "examples.npz", **examples)
    return results


def _build_demo(root: Path, shared_dir: Path) -> Path:
    import time

    from freqpure import DiffPure, FreqPure, StepNoise
    from freqpure.attacks import AttackModel, EOTGradient, attack_purifier, pgd
    from freqpure.cli.analyze import measure, pgd_attack, write_analysis
    from freqpure.data import CIFAR10_CLASSES, eval_subset_indices, load_cifar10, to_float

    images, labels = load_cifar10("test", shared_dir / "data" / "cifar10")
    idx = eval_subset_indices(labels, N_IMAGES, seed=0)
    rest = np.setdiff1d(np.arange(len(labels)), idx)
    fit = np.random.Generator(np.random.PCG64(1)).permutation(rest)[:2000]
    x_fit = to_float(images[fit])
    classifier = _fit_classifier(x_fit, torch.from_numpy(labels[fit].copy()))
    eps_model = _fit_unet(x_fit)
    x, y = to_float(images[idx]), torch.from_numpy(labels[idx].copy())
    purifiers = {"none": None, "diffpure": DiffPure(eps_model, t_star=100, steps=5, seed=0),
                 "freqpure": FreqPure(eps_model, 10, 10, 0.3, t_start=100, steps=5, seed=0)}
    demo = root / "demo"
    top: dict = {"n": N_IMAGES, "seed": 0, "defences": {}}
    grid_rows = [x.numpy()]
    for name, purifier in purifiers.items():
        start = time.perf_counter()
        model = AttackModel(classifier, None if purifier is None else attack_purifier(purifier, "full"))
        oracle = EOTGradient(model, eot=1, seed=0)
        adv = pgd(oracle, x, y, norm="linf", eps=8 / 255, steps=3, step_size=4 / 255,
                  generator=torch.Generator().manual_seed(0)).x_adv
        with torch.no_grad():
            purified = adv if purifier is None else purifier(adv, noise=StepNoise(7))
            x_seen = x if purifier is None else purifier(x, noise=StepNoise(7))
            pred_clean = classifier(x_seen).argmax(1)
            pred_adv = classifier(purified).argmax(1)
        examples = {"clean": x.numpy(), "adversarial": adv.numpy(), "purified": purified.float().numpy(),
                    "labels": y.numpy().astype(np.int64), "pred_clean": pred_clean.numpy().astype(np.int64),
                    "pred_adversarial": pred_adv.numpy().astype(np.int64),
                    "class_names": np.array(CIFAR10_CLASSES)}
        config = {"defence": name, "purifier": None if purifier is None else purifier.extra_repr(),
                  "attack": {"name": "pgd", "norm": "linf", "eps": "8/255", "steps": 3}, "n": N_IMAGES}
        res = _write_run(demo / name, name, examples, config, time.perf_counter() - start)
        top["defences"][name] = {k: res[k] for k in ("clean_accuracy", "robust_accuracy")}
        if name != "none":
            grid_rows.append(np.clip(purified.numpy(), 0, 1))
    (demo / "results.json").write_text(json.dumps(top, indent=2))
    _grid_png(grid_rows).save(demo / "grid.png")
    m = measure(x, y, classifier, {k: v for k, v in purifiers.items() if v is not None},
                pgd_attack(classifier, steps=5, seed=0), batch_size=N_IMAGES)
    write_analysis(demo, m, settings={"n": N_IMAGES}, low_radius=10, ci={"n_boot": 200})
    return demo


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, shared_dir) -> Path:
    with one_thread():
        return _build_demo(tmp_path_factory.mktemp("report"), shared_dir)


# ---------------------------------------------------------------------------------------------
# HTML checks
# ---------------------------------------------------------------------------------------------
class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str | None] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "img":
            self.imgs.append(dict(attrs).get("src"))


def _check_images(page: str) -> int:
    """Every <img> is a non-empty base64 PNG data URI that decodes; returns the image count."""
    parser = _Tags()
    parser.feed(page)
    prefix = "data:image/png;base64,"
    for i, src in enumerate(parser.imgs):
        assert src and src.startswith(prefix) and len(src) > len(prefix), f"image {i}: {str(src)[:60]!r}"
        with Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True))) as img:
            assert img.format == "PNG"
            img.load()
    assert not parser.tags & {"script", "link", "iframe", "object", "embed"}, "no scripts or external resources"
    assert "url(" not in page and "@import" not in page
    return len(parser.imgs)


@pytest.mark.slow
def test_demo_report_embeds_every_image(demo_dir):
    path = write_report(demo_dir)
    assert path == demo_dir / "report.html"
    page = path.read_text()
    # 3 defences × (8 examples × 3 images + 2 spectra examples × 3 rows × 5 maps - 2 reference rows × 2)
    # + grid.png + 3 analysis plots.
    per_run = N_IMAGES * 3 + 2 * (3 * 3 + 2 * 2)
    assert _check_images(page) == 3 * per_run + 1 + 3
    for name in DEFENCES:
        assert f'id="run-{name}"' in page
    assert "robust_accuracy" in page and "clean_accuracy" in page
    assert "Frequency analysis" in page and "Spearman" in page
    assert 'class="ok"' in page and 'class="bad"' in page, "correct and wrong predictions are marked"
    assert page.count("<h2>") >= 5


def test_single_run_report_shows_results_with_intervals(demo_dir, tmp_path):
    run = demo_dir / "freqpure"
    out = write_report(run, tmp_path / "single.html", max_examples=3, max_spectra=1)
    page = out.read_text()
    results = json.loads((run / "results.json").read_text())
    acc = results["robust_accuracy"]
    lo, hi = acc["ci95"]
    assert f"{100 * acc['accuracy']:.1f}%" in page and f"[{100 * lo:.1f}%, {100 * hi:.1f}%]" in page
    assert _check_images(page) == 3 * 3 + (3 * 3 + 2 * 2)
    assert "results.md" in page and "8 per-sample records" in page


def test_metric_rows_pair_values_with_intervals():
    rows = {m.name: m for m in metric_rows({
        "clean_accuracy": 0.9, "clean_accuracy_ci95": [0.8, 0.95],
        "robust": {"accuracy": 0.4, "wilson": {"lower": 0.3, "upper": 0.5}, "n": 100},
        "fpr": 0.1, "fpr_lower": 0.05, "fpr_upper": 0.2,
        "seed": 3, "note": None, "versions": {"torch": "2.13"},
    })}
    assert rows["clean_accuracy"].interval == (0.8, 0.95) and "clean_accuracy_ci95" not in rows
    assert rows["robust"].value == 0.4 and rows["robust"].interval == (0.3, 0.5) and rows["robust.n"].value == 100
    assert rows["fpr"].interval == (0.05, 0.2) and "fpr_lower" not in rows
    assert rows["seed"].value == 3 and rows["note"].value is None
    assert not any(name.startswith("versions") for name in rows), "versions get their own table"
    from freqpure.report import _fmt_metric

    assert _fmt_metric(rows["robust"]) == ("40.0%", "[30.0%, 50.0%]")
    assert _fmt_metric(rows["robust.n"]) == ("100", "") and _fmt_metric(rows["fpr"]) == ("0.1", "[0.05, 0.2]")


def test_report_escapes_all_text(demo_dir, tmp_path):
    run = tmp_path / "evil"
    shutil.copytree(demo_dir / "diffpure", run)
    with np.load(run / "examples.npz") as npz:
        ex = dict(npz)
    ex["class_names"] = np.array(["<img src=x onerror=alert(1)>"] + [f"c{i}&" for i in range(9)])
    np.savez(run / "examples.npz", **ex)
    results = json.loads((run / "results.json").read_text())
    results['<script>alert("k")</script>'] = "</td><b>bold</b>"
    (run / "results.json").write_text(json.dumps(results))
    (run / "config.yaml").write_text("note: '</pre><h1>x</h1>'\n")
    page = write_report(run).read_text()
    for raw in ("<img src=x", "<script>", "<b>bold</b>", "</pre><h1>"):
        assert raw not in page
    assert "&lt;script&gt;" in page and "&lt;b&gt;bold&lt;/b&gt;" in page and "c1&amp;" in page
    _check_images(page)


def _break(run: Path, what: str) -> str:
    """Damage one input of a copied run dir; returns the file name the error must mention."""
    if what == "missing examples":
        (run / "examples.npz").unlink()
        return "examples.npz"
    if what == "missing results":
        (run / "results.json").unlink()
        return "results.json"
    if what == "corrupt results":
        (run / "results.json").write_text('{"clean_accuracy": 0.9,')
        return "results.json"
    if what == "corrupt config":
        (run / "config.yaml").write_text("a: [1, 2\n")
        return "config.yaml"
    if what == "truncated examples":
        data = (run / "examples.npz").read_bytes()
        (run / "examples.npz").write_bytes(data[: len(data) // 2])
        return "examples.npz"
    if what == "examples without labels":
        with np.load(run / "examples.npz") as npz:
            ex = {k: npz[k] for k in npz.files if k != "labels"}
        np.savez(run / "examples.npz", **ex)
        return "examples.npz"
    if what == "bad samples line":
        (run / "samples.jsonl").write_text('{"index": 0}\n{"index": \n')
        return "samples.jsonl: line 2"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["missing examples", "missing results", "corrupt results", "corrupt config",
                                  "truncated examples", "examples without labels", "bad samples line"])
def test_missing_or_corrupt_files_are_named(demo_dir, tmp_path, what):
    run = tmp_path / "run"
    shutil.copytree(demo_dir / "none", run)
    expected = _break(run, what)
    with pytest.raises((FileNotFoundError, ValueError), match=expected.replace(".", r"\.")):
        write_report(run)


def test_demo_level_problems_are_named(demo_dir, tmp_path, capsys):
    from freqpure.cli.main import main

    demo = tmp_path / "demo"
    shutil.copytree(demo_dir, demo)
    (demo / "grid.png").write_bytes(b"not a png")
    assert main(["report", str(demo)]) == 2
    assert "grid.png" in capsys.readouterr().err
    (demo / "grid.png").unlink()
    (demo / "analysis_ratio.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"analysis_ratio\.png"):
        write_report(demo)
    (demo / "analysis.json").unlink()
    (demo / "results.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"results\.json"):
        write_report(demo)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="nothing to report"):
        write_report(empty)
    assert main(["report", str(demo_dir / "none"), "-o", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").is_file() and str(tmp_path / "r.html") in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Headless Chromium
# ---------------------------------------------------------------------------------------------
# Injected into a copy of the page (the report itself has no scripts and its CSP forbids them):
# records every image's decode state, every error event and every CSP violation into the DOM,
# which --dump-dom then prints after the load event.
_PROBE = """<script>
window.__problems = [];
window.addEventListener('error',
  e => window.__problems.push('error: ' + (e.message || (e.target && e.target.tagName))), true);
document.addEventListener('securitypolicyviolation', e => window.__problems.push('csp: ' + e.blockedURI));
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  document.documentElement.setAttribute('data-probe', JSON.stringify(
    {images: imgs.length, broken: bad, problems: window.__problems}));
});
</script>"""


def _chromium() -> str:
    exe = os.environ.get("FREQPURE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.fail(f"headless Chromium is required for the HTML report test but was not found on PATH; install "
                    f"it with `{CHROMIUM_INSTALL}` (Debian package 'chromium'), or set FREQPURE_CHROMIUM",
                    pytrace=False)
    return exe


def _run_chromium(exe: str, url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}",
            "--enable-logging=stderr", "--v=0", *extra, url]
    return subprocess.run(args, capture_output=True, text=True, timeout=180, check=False)


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.browser
@pytest.mark.slow
def test_report_renders_in_chromium(demo_dir, tmp_path):
    exe = _chromium()
    page_path = write_report(demo_dir, tmp_path / "report.html")
    page = page_path.read_text()
    n_images = _check_images(page)

    # 0. The console capture works in this Chromium (otherwise check 2 below could pass vacuously).
    probe_page = tmp_path / "console_probe.html"
    probe_page.write_text("<!DOCTYPE html><html><body><script>console.error('freqpure-probe')</script></body></html>")
    proc = _run_chromium(exe, probe_page.as_uri(), tmp_path / "profile0", "--dump-dom")
    assert any("freqpure-probe" in line for line in _console_lines(proc.stderr)), (
        f"could not capture Chromium's console output; stderr tail:\n{proc.stderr[-2000:]}")

    # 1. Screenshot of the real page: not blank, and the embedded images are drawn (many colours).
    shot = tmp_path / "shot.png"
    proc = _run_chromium(exe, page_path.as_uri(), tmp_path / "profile1", f"--screenshot={shot}",
                         "--window-size=1200,2000")
    assert proc.returncode == 0 and shot.is_file(), f"screenshot failed:\n{proc.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1200)
    background = np.all(pixels == pixels[-1, -1], axis=-1).mean()
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert background < 0.9 and pixels.std() > 20, "screenshot looks blank"
    assert colours > 2000, f"only {colours} distinct colours: the embedded images were not drawn"

    # 2. No console messages at all: the page has no scripts, so any message is an error or a
    #    Content-Security-Policy violation (an external asset).
    assert not _console_lines(proc.stderr), "console errors:\n" + "\n".join(_console_lines(proc.stderr))

    # 3. Every image decoded in the browser, no error events, no CSP violations (probe in a copy).
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    assert csp in page
    probed = page.replace(csp, csp + "; script-src 'unsafe-inline'").replace("<head>", "<head>" + _PROBE, 1)
    probed_path = tmp_path / "probed.html"
    probed_path.write_text(probed)
    proc = _run_chromium(exe, probed_path.as_uri(), tmp_path / "profile2", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    start = proc.stdout.find("data-probe=")
    assert start >= 0, f"probe did not run; stderr tail:\n{proc.stderr[-2000:]}"
    raw = proc.stdout[start:].split('"', 2)[1]
    import html as html_lib

    probe = json.loads(html_lib.unescape(raw))
    assert probe == {"images": n_images, "broken": 0, "problems": []}
    assert not _console_lines(proc.stderr), "\n".join(_console_lines(proc.stderr))
