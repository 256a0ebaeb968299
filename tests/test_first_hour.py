"""Issue #24, "a first hour without surprises": one set of defaults and presets, one meaning per flag, a valid
``--set`` example per command, folders mirrored by ``purify``, what ``seed`` means, the demo's calibration."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import pytest
import torch

from freqpure import DiffPure, FreqPure, StepNoise
from freqpure.cli.main import build_parser
from freqpure.config import PurifierConfig, apply_overrides, from_dict, load_yaml, preset, to_dict
from freqpure.errors import UsageError
from freqpure.presets import DEFAULTS, PRESETS

ROOT = Path(__file__).resolve().parents[1]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _commands() -> dict[str, argparse.ArgumentParser]:
    commands = _subparsers(build_parser())
    for name, sub in _subparsers(commands.pop("train")).items():
        commands[f"train {name}"] = sub
    return commands


def _settings_class(command: str) -> type:
    from freqpure.cli.report import ReportSettings
    from freqpure.evaluation.analyze import AnalyzeSettings
    from freqpure.evaluation.config import EvalConfig
    from freqpure.evaluation.demo import DemoSettings
    from freqpure.purified_data import PurifySplitConfig
    from freqpure.study import StudyConfig
    from freqpure.training.config import ClassifierTrainConfig, DiffusionTrainConfig

    return {"evaluate": EvalConfig, "demo": DemoSettings, "purify": PurifierConfig, "report": ReportSettings,
            "analyze": AnalyzeSettings, "study": StudyConfig, "train classifier": ClassifierTrainConfig,
            "train diffusion": DiffusionTrainConfig, "train purify-data": PurifySplitConfig}[command]


def test_every_set_example_in_the_help_is_accepted_by_its_command() -> None:
    checked = []
    for name, parser in _commands().items():
        action = next((a for a in parser._actions if a.dest == "overrides"), None)
        if action is None:
            continue
        example = re.search(r"e\.g\. (.*?) \(repeatable", action.help).group(1)
        overrides = re.findall(r"--set (\S+)", example)
        assert overrides, (name, action.help)
        cls = _settings_class(name)
        if name == "study":  # a study needs its stages: the shipped one
            base = load_yaml(cls, ROOT / "configs" / "study-cifar10.yaml")
        else:
            base = from_dict(cls, {})
        apply_overrides(base, overrides)  # raises on an unknown key
        checked.append(name)
    assert {"evaluate", "demo", "purify", "report", "study", "analyze"} <= set(checked)


def test_library_classes_config_and_purify_share_one_set_of_defaults() -> None:
    cfg = PurifierConfig()
    assert (cfg.method, cfg.rounds, cfg.sampler, cfg.amp_radius, cfg.phase_radius, cfg.delta, cfg.variant) == (
        DEFAULTS["method"], DEFAULTS["rounds"], DEFAULTS["sampler"], DEFAULTS["amp_radius"],
        DEFAULTS["phase_radius"], DEFAULTS["delta"], DEFAULTS["variant"])
    fp = inspect.signature(FreqPure).parameters
    dp = inspect.signature(DiffPure).parameters
    assert f"{fp['t_star'].default}:{fp['steps'].default}" == cfg.rounds
    assert f"{dp['t_star'].default}:{dp['steps'].default}" == cfg.rounds
    assert (fp["amp_radius"].default, fp["phase_radius"].default, fp["delta"].default) == (
        cfg.amp_radius, cfg.phase_radius, cfg.delta)
    assert dp["sampler"].default == cfg.sampler
    assert to_dict(preset("default")) == to_dict(cfg)
    from freqpure.evaluation.analyze import AnalyzeSettings

    analyze = AnalyzeSettings()
    assert to_dict(analyze.purifier) == to_dict(cfg)
    from freqpure.cli.purify import _settings

    args = build_parser().parse_args(["purify", "x.png", "--out", "o"])
    assert to_dict(_settings(args)[0]) == to_dict(cfg)


def test_demo_defaults_are_the_bundled_table_preset() -> None:
    from freqpure.evaluation.demo import DemoSettings, demo_configs

    table = preset("bundled-table")
    fp = demo_configs(DemoSettings())["freqpure"].purifier
    for key in ("rounds", "amp_radius", "phase_radius", "delta", "sampler", "variant"):
        assert getattr(fp, key) == getattr(table, key), key


def _purifier_section(path: Path) -> dict:
    from freqpure.evaluation.config import EvalConfig

    return to_dict(load_yaml(EvalConfig, path).purifier)


@pytest.mark.parametrize("name, configs", [
    ("bundled-table", ["cifar10-freqpure-pgd-linf-bundled", "cifar10-freqpure-pgd-l2-bundled",
                       "cifar10-freqpure-bpda-bundled", "cifar10-freqpure-table-bundled"]),
    ("paper", ["cifar10-freqpure-pgd-linf-published", "cifar10-freqpure-pgd-l2-published",
               "cifar10-freqpure-bpda-published", "cifar10-freqpure-autoattack-rand-published"]),
    ("official-v2", ["cifar10-freqpure-official-v2-bundled", "cifar10-freqpure-official-v2-published"]),
    ("official-sh", ["cifar10-freqpure-official-sh-bundled", "cifar10-freqpure-official-sh-published"]),
    ("diffpure-paper", ["cifar10-diffpure-pgd-linf-published", "cifar10-diffpure-bpda-published"]),
    ("paper-imagenet", ["imagenet-freqpure-autoattack-linf-published"]),
])
def test_presets_are_the_settings_of_the_configs_that_name_them(name: str, configs: list[str]) -> None:
    want = PRESETS[name].settings
    for config in configs:
        section = _purifier_section(ROOT / "configs" / f"{config}.yaml")
        assert {k: section[k] for k in want} == {k: preset(name).__dict__[k] for k in want}, config


def test_unknown_preset_is_one_clear_error() -> None:
    with pytest.raises(UsageError, match="unknown preset 'papr'; choose one of default, bundled-table, paper"):
        preset("papr")


def _purify_settings(*argv: str) -> PurifierConfig:
    from freqpure.cli.purify import _settings

    return _settings(build_parser().parse_args(["purify", "x.png", "--out", "o", *argv]))[0]


def test_purify_flags_presets_radius_and_the_plan_message() -> None:
    assert _purify_settings("--preset", "paper").rounds == "20:5*5,50:5*5"
    cfg = _purify_settings("--preset", "bundled-table", "--method", "diffpure")
    assert (cfg.method, cfg.rounds) == ("diffpure", "100:5")  # flags change the preset
    cfg = _purify_settings("--radius", "4")
    assert cfg.amp_radius == cfg.phase_radius == 4.0
    assert _purify_settings("--t-star", "50", "--steps", "5").rounds == "50:5"
    assert _purify_settings("--t-start", "50", "--steps", "5").rounds == "50:5"  # the deprecated spelling
    for argv, message in ((["--rounds", "100:5", "--t-star", "100"], "both set the purification plan; give --rounds"),
                          (["--steps", "5"], "--steps needs --t-star too"),
                          (["--radius", "3", "--amp-radius", "2"], "--radius sets both radii"),
                          (["--preset", "paper", "--config", "p.yaml"], "--preset and --config")):
        with pytest.raises(UsageError, match=message):
            _purify_settings(*argv)


def test_purify_help_documents_every_option() -> None:
    parser = _commands()["purify"]
    for action in parser._actions:
        if action.option_strings and action.help != argparse.SUPPRESS:
            assert action.help and "(default: None)" not in action.help, action.option_strings


def test_demo_attack_steps_and_the_deprecated_steps_spelling(capsys) -> None:
    from freqpure.cli.common import load_command_config
    from freqpure.evaluation.demo import DemoSettings

    ns = build_parser().parse_args(["demo", "--attack-steps", "7"])
    assert load_command_config(DemoSettings, ns, {"attack_steps": ns.attack_steps}).attack_steps == 7
    with pytest.warns(FutureWarning, match="attack_steps"):
        assert DemoSettings(steps=5).attack_steps == 5
    with pytest.warns(FutureWarning), pytest.raises(UsageError, match="disagree"):
        DemoSettings(steps=5, attack_steps=6)
    assert "--steps" not in _commands()["demo"].format_help()  # the old spelling works but is not advertised


def test_purify_mirrors_each_input_folder_when_names_repeat(tmp_path: Path) -> None:
    from PIL import Image

    from freqpure.imageio import collect_images

    for folder in ("a", "b"):
        (tmp_path / folder / "sub").mkdir(parents=True)
        for name in ("x.png", "sub/y.png"):
            Image.new("RGB", (32, 32)).save(tmp_path / folder / name)
    Image.new("RGB", (32, 32)).save(tmp_path / "z.png")
    names = sorted(str(n) for _, n in collect_images([tmp_path / "a", tmp_path / "b", tmp_path / "z.png"]))
    assert names == ["a/sub/y.png", "a/x.png", "b/sub/y.png", "b/x.png", "z.png"]
    assert sorted(str(n) for _, n in collect_images([tmp_path / "a"])) == ["sub/y.png", "x.png"]  # one folder: as is
    (tmp_path / "c").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "c" / "x.png")
    with pytest.raises(UsageError, match="same output name: x.png"):
        collect_images([tmp_path / "c" / "x.png", tmp_path / "a" / "x.png"])


def _toy_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.1 * x


def test_what_seed_means() -> None:
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first, second = FreqPure(_toy_eps, 2, 2, steps=2, seed=0), FreqPure(_toy_eps, 2, 2, steps=2, seed=0)
        a1, a2 = first(x), first(x)
        b1, b2 = second(x), second(x)
        fixed = [first(x, noise=StepNoise(7)) for _ in range(2)]
    assert torch.equal(a1, b1) and torch.equal(a2, b2)  # seed fixes the sequence of calls ...
    assert not torch.equal(a1, a2)  # ... whose calls draw fresh noise (a stochastic defence)
    assert torch.equal(fixed[0], fixed[1])  # a noise passed in gives the same output every call


def test_purified_output_is_not_clamped_and_says_why() -> None:
    doc = FreqPure.__doc__ + (FreqPure.forward.__doc__ or "")
    assert "unclamped" in doc or "not clamped" in doc
    x = torch.full((1, 3, 8, 8), 0.99)
    with torch.no_grad():
        out = FreqPure(lambda x_t, t: -3 * torch.ones_like(x_t), 2, 2, steps=2)(x, StepNoise(0))
    assert float(out.max()) > 1  # exact arithmetic: the estimate may leave [0, 1]; clamp(0, 1) to save images


def test_demo_estimate_calibration_is_per_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from freqpure.evaluation import demo

    monkeypatch.setenv("FREQPURE_CACHE_DIR", str(tmp_path))
    assert demo.calibration_file() == tmp_path / "demo-timing.json"
    key = demo.machine_key(torch.device("cpu"), 2)
    assert key.endswith("| 2 thread(s) | cpu") and demo.cpu_model() in key
    assert demo.calibration(key) == (1.0, 0)
    for ratio in (0.7, 0.6, 0.8, 5.0, 0.65, 0.7):
        assert demo.record_calibration(key, ratio)
    factor, runs = demo.calibration(key)
    assert runs == 5 and factor == pytest.approx(0.7)  # the last five, their median: one outlier does not move it
    assert demo.calibration("another machine | 1 thread(s) | cpu") == (1.0, 0)
    (tmp_path / "demo-timing.json").write_text("not json")
    assert demo.calibration(key) == (1.0, 0)  # a damaged file is ignored, never an error


@pytest.mark.data
def test_evaluate_prints_the_table_not_the_whole_results_md(tmp_path: Path, capsys) -> None:
    from freqpure.cli.main import main
    from helpers import model_name, one_thread

    sets = ["data.n=2", "batch_size=2", "purifier.method=none", "attacks.0.steps=1", "sanity.eps_sweep=[]",
            "sanity.undefended_steps=2", f"classifier.name={model_name('cifar10-resnet-small')}"]
    with one_thread():
        assert main(["evaluate", *[a for s in sets for a in ("--set", s)], "--out", str(tmp_path / "r"),
                     "--no-progress", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| clean (standard) |" in printed and "robust (worst case over attacks)" in printed
    assert "## Protocol" not in printed and "## Sanity" not in printed
    assert "## Protocol" in (tmp_path / "r" / "results.md").read_text()
    assert f"protocol, sanity checks and time: {tmp_path / 'r' / 'results.md'}" in printed


@pytest.mark.data
def test_report_speaks_words_and_says_what_the_models_are(tiny_demo) -> None:
    import html

    from freqpure.report import write_report

    out, _, _ = tiny_demo
    page = html.unescape(write_report(out, out / "words.html").read_text())
    assert "bundled small models, trained on a CPU" in page and "not the paper's" in page
    headings = re.findall(r"<th title=\"[^\"]*\">([^<]*)</th>", page)
    assert headings == ["PGD L∞ 8/255, full gradient"]  # words, not the slug pgd-linf-8/255-full-eot1
    bare = page[page.index('id="run-no-defence"'):page.index('id="run-diffpure"')]
    assert "classified once by the bare classifier" in bare and "<dt>noise</dt>" not in bare
    assert "purification step" not in bare and "The sanity row is a separate check" in bare
    defended = page[page.index('id="run-diffpure"'):]
    assert "axes and colour scales" in defended and "cycles per image" in defended
    raw = page[page.index('id="raw"'):]
    assert "image_size:" not in raw.replace("data.image_size left out", "")


@pytest.mark.data
def test_multi_run_page_lists_every_runs_attacks(tiny_demo) -> None:
    import copy

    from freqpure.report import load_run
    from freqpure.report.page import what_was_run

    out, _, _ = tiny_demo
    runs = [load_run(out / "none"), load_run(out / "diffpure")]
    runs[1] = copy.deepcopy(runs[1])
    runs[1].results.config["attacks"][0]["steps"] = 7
    attacks = what_was_run(runs)["attacks"]
    assert len(attacks) == 2
    assert "2 steps" in attacks[0] and "(against no defence)" in attacks[0]
    assert "7 steps" in attacks[1] and "(against DiffPure)" in attacks[1]


@pytest.mark.data
def test_readme_evaluate_your_own_classifier(tmp_path: Path) -> None:
    """The README's snippet, at a tiny size: any nn.Module taking [B, 3, 32, 32] in [0, 1] to logits."""
    import freqpure
    from freqpure.evaluation import evaluate, load_eval_config
    from helpers import model_name, one_thread

    class MyNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    clf = MyNet().eval()
    eps = freqpure.load_diffusion(model_name("cifar10-ddpm-small"))
    cfg = load_eval_config(ROOT / "configs" / "cifar10-freqpure-pgd-linf-bundled.yaml",
                           ["data.n=2", "batch_size=2", "classifier.name=my-net", "attacks.0.steps=1",
                            "attacks.0.eot=1", "defence.ensemble=1", "purifier.rounds=20:1", "sanity.eps_sweep=[]",
                            "sanity.undefended_steps=1"])
    with one_thread():
        results = evaluate(cfg, tmp_path / "my-net", models=(clf, eps), progress=False)
    assert results.n == 2 and 0 <= results.robust.accuracy <= results.clean.accuracy <= 1
    assert results.config["classifier"]["name"] == "my-net"
    readme = (ROOT / "README.md").read_text()
    assert "evaluate(cfg, \"runs/my-net\", models=(clf, eps))" in readme


def test_purify_two_folders_with_equal_names_end_to_end(tmp_path: Path) -> None:
    import json

    from PIL import Image

    from freqpure.cli.main import main
    from helpers import model_name, one_thread

    for folder, shade in (("a", 60), ("b", 200)):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (32, 32), (shade, shade, shade)).save(tmp_path / folder / "x.png")
    out = tmp_path / "out"
    with one_thread():
        assert main(["purify", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--rounds", "20:1",
                     "--diffusion", model_name("cifar10-ddpm-small"), "--device", "cpu", "--threads", "1",
                     "--no-progress"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a/x.png", "b/x.png"]
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert {f["output"]: Path(f["input"]).parent.name for f in files} == {"a/x.png": "a", "b/x.png": "b"}


def test_freqpure_takes_t_star_like_diffpure() -> None:
    plan = FreqPure(_toy_eps, 2, 2, t_star=20, steps=2).rounds
    assert [(r.t_star, r.steps) for r in plan] == [(20, 2)]
    assert [(r.t_star, r.steps) for r in DiffPure(_toy_eps, t_star=20, steps=2).rounds] == [(20, 2)]
    assert [(r.t_star, r.steps) for r in FreqPure(_toy_eps, 2, 2, t_start=20, steps=2).rounds] == [(20, 2)]  # old
    with pytest.raises(UsageError, match="t_start=20 is the old name of t_star=30"):
        FreqPure(_toy_eps, 2, 2, 0.3, 30, t_start=20)
