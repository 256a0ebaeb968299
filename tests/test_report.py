"""The HTML report (freqpure.report, ``freqpure report``) on a real tiny demo: every consumer of the typed
results, the page's content, the grid's captions, escaping, named errors, and headless Chromium at desktop
and phone widths (Debian's ``chromium`` package)."""

from __future__ import annotations

import base64
import html as html_lib
import importlib.util
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from freqpure.cli.main import main
from freqpure.evaluation.demo import format_table, read_demo
from freqpure.evaluation.paired import compare_samples
from freqpure.evaluation.results import Results, read_results, read_samples
from freqpure.evaluation.table import render_table
from freqpure.plots import grid_columns
from freqpure.report import CSP, MAX_BYTES, write_report
from freqpure.samplers import NOISE_SCHEME

DEFENCES = ("none", "diffpure", "freqpure")
CHROMIUM_INSTALL = "apt-get install -y chromium"
REPO = Path(__file__).resolve().parents[1]


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


def _paired_runs_module():
    spec = importlib.util.spec_from_file_location("paired_runs", REPO / "benchmarks" / "paired_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# Typed results through every consumer
# ---------------------------------------------------------------------------------------------
def test_evaluate_output_round_trips_through_every_consumer(tiny_demo, tmp_path, capsys) -> None:
    out, _, printed = tiny_demo
    runs = [out / m for m in DEFENCES]
    results = [read_results(r) for r in runs]
    for run, res in zip(runs, results):
        raw = json.loads((run / "results.json").read_text())
        assert raw["schema_version"] == 1 and raw["noise_scheme"] == NOISE_SCHEME and raw["seed"] == 0
        assert {"torch", "numpy", "freqpure"} <= set(raw["versions"]) and raw["resumed"] is False
        assert res.eval_config().attacks[0].steps == 2, "the full config is stored"
        assert Results.from_dict(json.loads(json.dumps(res.to_dict()))) == res
        samples = read_samples(run)
        assert len(samples) == 3 and all(s.schema_version == 1 for s in samples.values())
        assert sum(s.robust for s in samples.values()) == res.robust.correct
    # table
    assert main(["table", *map(str, runs), "--out", str(tmp_path / "t.md")]) == 0
    table = capsys.readouterr().out
    assert table == render_table(results) == (tmp_path / "t.md").read_text()
    for res in results:
        lo, hi = res.robust.ci95
        assert f"{100 * res.robust.accuracy:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" in table
    # demo
    _, by_method = read_demo(out)
    assert format_table(None, by_method) in printed
    # paired_runs.py
    text = _paired_runs_module().render(runs[1], runs[2])
    cmp = compare_samples(read_samples(runs[1]), read_samples(runs[2]))
    for row in cmp.rows:
        assert f"| {row.metric} | {row.accuracy_a:.1%} | {row.accuracy_b:.1%} | {row.only_a} | {row.only_b} |" in text
    # report (a comparison of the three runs)
    page = write_report(runs, tmp_path / "cmp.html").read_text()
    for res in results:
        lo, hi = res.robust.ci95
        assert f"[{100 * lo:.1f}, {100 * hi:.1f}]" in page
    assert "DiffPure (A) vs FreqPure (B), 3 common images" in page


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------
def _section(page: str, anchor: str) -> str:
    start = page.index(f'<section class="run" id="{anchor}">')
    return page[start:page.index("</section>", start)]


def test_demo_report_is_written_for_a_reader(tiny_demo) -> None:
    out, _, _ = tiny_demo
    page = (out / "report.html").read_text()
    assert len(page.encode()) < MAX_BYTES
    assert f'content="{CSP}"' in page
    _check_images(page)
    for heading in ("What was run", "Accuracy", "Paired comparison", "Reading", "Examples", "Raw configuration"):
        assert f">{heading}</h2>" in page, heading
    assert 'class="accuracy"' in page and 'class="legend"' in page
    _, results = read_demo(out)
    dp = results["diffpure"]
    assert f"DiffPure keeps {dp.robust.correct} of 3 test images correct under the worst case" in page
    assert "noise to t* = 20, then 2 DDPM denoising steps" in page and "2 steps of 10/255, EOT 2" in page
    assert "exact McNemar" in page
    none = _section(page, "run-no-defence")
    for absent in ("diffusion model", "plan", "decision", "gradient through the purifier", "spectra"):
        assert absent not in none, f"the undefended run shows {absent!r}"
    freq = _section(page, "run-freqpure")
    assert "diffusion model" in freq and "amplitude kept within radius" in freq and "spectra" in freq
    assert "amplitude kept within radius" not in _section(page, "run-diffpure")
    raw = page[page.index('<h2 id="raw">'):]
    assert raw.index("<details>") < raw.index("batch_size: 2") and "noise_scheme" in raw
    for flattened in ("per_attack.", "None", "no_progress", "overwrite"):
        assert flattened not in page[:page.index('<h2 id="raw">')], flattened


def test_grid_captions_are_the_stored_predictions(tiny_demo) -> None:
    out, _, _ = tiny_demo
    examples = {m: dict(np.load(out / m / "examples.npz")) for m in DEFENCES}
    columns = grid_columns(examples)
    assert [c.heading for c in columns] == ["none: clean", "none: adversarial", "diffpure: clean",
                                            "diffpure: adversarial", "diffpure: purified", "freqpure: clean",
                                            "freqpure: adversarial", "freqpure: purified"]
    keys = {"clean": "pred_clean", "adversarial": "pred_adversarial", "purified": "pred_purified"}
    for col in columns:
        ex = examples[col.defence]
        names = [str(c) for c in ex["class_names"]]
        preds = ex[keys[col.heading.split(": ")[1]]]
        assert col.captions == [names[int(p)] for p in preds]
        assert col.correct == [int(p) == int(y) for p, y in zip(preds, ex["labels"])]
    # the purified column is captioned with the classifier on that purification, not the defence's verdict
    ex = dict(examples["diffpure"])
    ex["pred_purified"] = (ex["pred_adversarial"] + 1) % 10
    purified = [c for c in grid_columns({"diffpure": ex}) if c.heading.endswith("purified")][0]
    assert purified.captions == [str(ex["class_names"][int(p)]) for p in ex["pred_purified"]]


def test_report_escapes_all_text(tiny_demo, tmp_path) -> None:
    out, _, _ = tiny_demo
    run = tmp_path / "evil"
    shutil.copytree(out / "diffpure", run)
    with np.load(run / "examples.npz") as npz:
        ex = dict(npz)
    ex["class_names"] = np.array(["<img src=x onerror=alert(1)>"] + [f"c{i}&" for i in range(9)])
    np.savez(run / "examples.npz", **ex)
    results = json.loads((run / "results.json").read_text())
    results["warnings"] = ['<script>alert("k")</script>']
    results["name"] = "</td><b>bold</b>"
    (run / "results.json").write_text(json.dumps(results))
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "# </pre><h1>x</h1>\n")
    page = write_report(run, max_examples=3).read_text()
    for raw in ("<img src=x", "<script>", "<b>bold</b>", "</pre><h1>"):
        assert raw not in page
    assert "&lt;script&gt;" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    _check_images(page)


def _break(run: Path, what: str) -> str:
    """Damage one input of a copied run dir; returns the file name the error must mention."""
    if what == "missing results":
        (run / "results.json").unlink()
        return "results.json"
    if what == "corrupt results":
        (run / "results.json").write_text('{"clean": 0.9,')
        return "results.json"
    if what == "corrupt config":
        (run / "config.yaml").write_text("a: [1, 2\n")
        return "config.yaml"
    if what == "truncated examples":
        data = (run / "examples.npz").read_bytes()
        (run / "examples.npz").write_bytes(data[: len(data) // 2])
        return "examples.npz"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["missing results", "corrupt results", "corrupt config",
                                  "truncated examples"])
def test_missing_or_corrupt_files_are_named(tiny_demo, tmp_path, what) -> None:
    out, _, _ = tiny_demo
    run = tmp_path / "run"
    shutil.copytree(out / "none", run)
    expected = _break(run, what)
    with pytest.raises((FileNotFoundError, ValueError), match=expected.replace(".", r"\.")):
        write_report(run)


def test_report_of_the_recorded_schema0_runs(tmp_path) -> None:
    """The n = 512 runs in benchmarks/results (schema 0, no config.yaml or examples.npz): table and paired
    comparison, no grid."""
    runs = [REPO / "benchmarks" / "results" / f"cifar10-{d}-table-bundled" for d in DEFENCES]
    page = write_report(runs, tmp_path / "recorded.html").read_text()
    assert "DiffPure (A) vs FreqPure (B), 512 common images" in page and ">Examples</h2>" not in page
    assert "DiffPure keeps 100 of 512 test images correct" in page and "19.5%" in page
    assert "exact McNemar p = " in page and "noise scheme linear-v1" in page
    _check_images(page)


def test_report_command(tiny_demo, tmp_path, capsys) -> None:
    out, _, _ = tiny_demo
    demo = tmp_path / "demo"
    shutil.copytree(out, demo)
    (demo / "grid.png").write_bytes(b"not a png")
    assert main(["report", str(demo)]) == 2
    assert "grid.png" in capsys.readouterr().err
    assert main(["report", str(demo / "none"), str(demo / "freqpure")]) == 2
    assert "--out" in capsys.readouterr().err
    target = tmp_path / "r.html"
    assert main(["report", str(demo / "none"), str(demo / "freqpure"), "-o", str(target)]) == 0
    assert str(target) in capsys.readouterr().out and "FreqPure" in target.read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="nothing to report"):
        write_report(empty)


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


def _harness(page: str, width: int, height: int, path: Path) -> Path:
    """The report inside a ``width``-px iframe (headless Chromium will not make a window narrower than 500 px);
    a script in the (same-origin, srcdoc) harness records the report's layout once it has loaded."""
    doc = html_lib.escape(page, quote=True)
    path.write_text(f"""<!DOCTYPE html><html><head><meta charset="utf-8"></head><body style="margin:0">
<iframe id="f" width="{width}" height="{height}" style="border:0;display:block" srcdoc="{doc}"></iframe>
<script>
const f = document.getElementById('f');
f.addEventListener('load', () => {{
  const d = f.contentDocument, root = d.documentElement;
  document.documentElement.setAttribute('data-layout', JSON.stringify({{
    width: f.contentWindow.innerWidth, scroll: root.scrollWidth,
    table: !!d.querySelector('table.accuracy'), legend: !!d.querySelector('.legend'),
    grid: !!d.querySelector('figure.pixel img')}}));
}});
</script></body></html>""")
    return path


def _dom_attr(proc: subprocess.CompletedProcess, attr: str) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    start = proc.stdout.find(f"{attr}=")
    assert start >= 0, f"probe did not run; stderr tail:\n{proc.stderr[-2000:]}"
    return json.loads(html_lib.unescape(proc.stdout[start:].split('"', 2)[1]))


@pytest.mark.browser
@pytest.mark.slow
def test_report_in_chromium_at_desktop_and_phone_width(tiny_demo, tmp_path) -> None:
    exe = _chromium()
    out, _, _ = tiny_demo
    page_path = out / "report.html"
    page = page_path.read_text()
    n_images = _check_images(page)
    shots = Path(os.environ.get("FREQPURE_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    height = 2400
    for name, width in (("desktop", 1280), ("phone", 390)):
        harness = _harness(page, width, height, tmp_path / f"harness-{name}.html")
        size = f"--window-size={max(width, 500)},{height}"
        # 1. a screenshot: not blank, the images are drawn, no console message at all (the page has no scripts,
        #    so any message is an error or a Content-Security-Policy violation)
        shot = shots / f"report-{name}.png"
        proc = _run_chromium(exe, harness.as_uri(), tmp_path / f"profile-shot-{name}", f"--screenshot={shot}", size)
        assert proc.returncode == 0 and shot.is_file(), f"screenshot failed:\n{proc.stderr[-2000:]}"
        with Image.open(shot) as img:
            img.convert("RGB").crop((0, 0, width, height)).save(shot)
        pixels = np.asarray(Image.open(shot).convert("RGB"))
        assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500, "screenshot looks blank"
        assert not _console_lines(proc.stderr), "console errors:\n" + "\n".join(_console_lines(proc.stderr))
        # 2. layout: nothing wider than the viewport, the accuracy table and the legend are there
        layout = _dom_attr(_run_chromium(exe, harness.as_uri(), tmp_path / f"profile-{name}", "--dump-dom", size),
                           "data-layout")
        assert layout["width"] == width, layout
        assert layout["scroll"] <= width, f"horizontal overflow at {width} px: {layout}"
        assert layout["table"] and layout["legend"] and layout["grid"], layout
    # 3. every image decodes in the browser, no error events, no CSP violations (probe in a copy)
    probed = page.replace(CSP, CSP + "; script-src 'unsafe-inline'").replace("<head>", "<head>" + _PROBE, 1)
    (tmp_path / "probed.html").write_text(probed)
    proc = _run_chromium(exe, (tmp_path / "probed.html").as_uri(), tmp_path / "profile-probe", "--dump-dom")
    assert _dom_attr(proc, "data-probe") == {"images": n_images, "broken": 0, "problems": []}
    assert not _console_lines(proc.stderr), "\n".join(_console_lines(proc.stderr))
