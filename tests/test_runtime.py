"""Runtime policy: precision (autocast around the ε-model and the classifier) and the thread policy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import freqpure
from freqpure import DiffPure, FreqPure, PurifiedClassifier, StepNoise
from freqpure.config import PurifierConfig, build_purifier, with_resolved_precision
from freqpure.errors import UsageError
from freqpure.runtime import Autocast, configure_threads, default_threads, resolve_precision
from helpers import model_name, one_thread

REPO_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


@pytest.fixture(scope="module")
def models():
    with one_thread():
        eps = freqpure.load_diffusion(model_name("cifar10-ddpm-small")).eval().requires_grad_(False)
        clf = freqpure.load_classifier(model_name("cifar10-resnet-small")).eval().requires_grad_(False)
    return eps, clf


def test_resolve_precision_names_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    assert os.environ["FREQPURE_PRECISION"] == "fp32"  # pinned by conftest: auto means fp32 in the tests
    assert resolve_precision("auto") == "fp32"
    monkeypatch.setenv("FREQPURE_PRECISION", "bf16")
    assert resolve_precision("auto") == "bf16"
    assert resolve_precision("fp32") == "fp32"  # an explicit value wins over the environment
    monkeypatch.delenv("FREQPURE_PRECISION")
    assert resolve_precision("auto") in ("fp32", "bf16")
    monkeypatch.setenv("FREQPURE_PRECISION", "fp16")
    with pytest.raises(UsageError, match="FREQPURE_PRECISION"):
        resolve_precision("auto")
    with pytest.raises(UsageError, match="precision"):
        resolve_precision("half")


def test_bad_precision_is_refused_everywhere(models) -> None:
    eps, clf = models
    with pytest.raises(UsageError, match="precision"):
        DiffPure(eps, precision="fp16")
    with pytest.raises(UsageError, match="precision"):
        PurifiedClassifier(clf, DiffPure(eps), precision="half")
    with pytest.raises(UsageError, match="purifier.precision"):
        PurifierConfig(precision="float16")


def test_config_precision_reaches_the_purifier_and_resolves(monkeypatch: pytest.MonkeyPatch, models) -> None:
    eps, _ = models
    assert PurifierConfig().precision == "auto"
    assert build_purifier(PurifierConfig(precision="bf16"), eps).precision == "bf16"
    assert with_resolved_precision(PurifierConfig(), "cpu").precision == "fp32"
    monkeypatch.setenv("FREQPURE_PRECISION", "bf16")
    assert with_resolved_precision(PurifierConfig(), "cpu").precision == "bf16"


def test_bf16_purification_is_close_to_fp32_and_stays_fp32(models, real_images) -> None:
    eps, _ = models
    x = real_images[:4]
    with one_thread(), torch.no_grad():
        ref = FreqPure(eps, 3, 3, t_star=100, steps=3)(x, StepNoise(1))
        low = FreqPure(eps, 3, 3, t_star=100, steps=3, precision="bf16")(x, StepNoise(1))
    assert low.dtype == torch.float32
    err = (low - ref).abs()
    assert float(err.max()) < 0.1 and float(err.mean()) < 0.01  # bf16 rounding, not a different chain
    assert not torch.equal(low, ref)  # bf16 really ran


@pytest.mark.slow
def test_bf16_gradient_wrt_input_is_fp32_and_agrees_with_fp32(models, real_images) -> None:
    eps, clf = models
    x = real_images[:2]
    grads = {}  # 2 images, 2 steps: small enough for the fast tier
    for precision in ("fp32", "bf16"):
        purifier = DiffPure(eps, 100, 2, precision=precision, checkpoint=True)
        defended = PurifiedClassifier(clf, purifier, vote="logits", precision=precision)
        xi = x.clone().requires_grad_(True)
        with one_thread():
            defended(xi, StepNoise(5)).logsumexp(1).sum().backward()
        assert xi.grad.dtype == torch.float32
        grads[precision] = xi.grad.flatten()
    cos = torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert float(cos) > 0.9


def test_autocast_wrapper_passes_attributes_and_returns_fp32(models, real_images) -> None:
    _, clf = models
    wrapped = Autocast(clf, "bf16")
    with torch.no_grad(), one_thread():
        out = wrapped(real_images[:4])
        ref = clf(real_images[:4])
    assert out.dtype == torch.float32
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.75
    assert not torch.equal(out, ref)
    assert wrapped.training == clf.training


def test_configure_threads_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1
        with pytest.raises(UsageError, match="threads"):
            configure_threads(0)
        monkeypatch.setenv("FREQPURE_THREADS", "x")
        with pytest.raises(UsageError, match="FREQPURE_THREADS"):
            configure_threads(None)
        monkeypatch.delenv("FREQPURE_THREADS")
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        n = default_threads()
        cores = len(os.sched_getaffinity(0))
        assert 1 <= n <= cores
        assert n <= max(1, cores - int(os.getloadavg()[0] + 0.5)) + 1  # load may move between the two reads
    finally:
        torch.set_num_threads(before)


def test_passive_wait_policy_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    from freqpure._threadenv import set_passive_wait_policy

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("FREQPURE_THREAD_POLICY", raising=False)
    assert not set_passive_wait_policy()  # torch is loaded already: too late, nothing changed
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delitem(sys.modules, "torch")  # as if torch were not loaded yet
    monkeypatch.setenv("FREQPURE_THREAD_POLICY", "torch")
    assert not set_passive_wait_policy() and "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delenv("FREQPURE_THREAD_POLICY")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert not set_passive_wait_policy() and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert set_passive_wait_policy() and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    # a loaded machine (one idle core): torch starts with one thread, unless the user chose a count
    import freqpure._threadenv as threadenv

    monkeypatch.setattr(threadenv, "idle_cores", lambda: 1)
    for preset in ({"OMP_NUM_THREADS": "2"}, {"FREQPURE_THREADS": "2"}, {}):
        for key in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "FREQPURE_THREADS"):
            monkeypatch.delenv(key, raising=False)
        for key, value in preset.items():
            monkeypatch.setenv(key, value)
        assert set_passive_wait_policy()
        assert os.environ.get("OMP_NUM_THREADS") == ("2" if "OMP_NUM_THREADS" in preset else
                                                     None if preset else "1")
    monkeypatch.setattr(threadenv, "idle_cores", lambda: 2)
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert set_passive_wait_policy() and "OMP_NUM_THREADS" not in os.environ  # idle: torch's own count


def test_first_purifier_call_applies_the_thread_policy_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import freqpure.runtime as rt

    def eps(x, t):
        return torch.zeros_like(x)

    def call() -> None:
        with torch.no_grad():
            DiffPure(eps, 10, 1)(torch.rand(1, 3, 8, 8), StepNoise(0))

    before = torch.get_num_threads()
    for key in ("OMP_NUM_THREADS", "FREQPURE_THREADS", "FREQPURE_THREAD_POLICY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(rt, "default_threads", lambda: 1)  # a loaded machine: one idle core
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(rt, "_THREADS_AT_IMPORT", 2)  # torch's count when freqpure was imported
        monkeypatch.setattr(rt, "_threads_settled", False)
        call()
        assert torch.get_num_threads() == 1  # torch imported first or not: the policy holds at the first call
        torch.set_num_threads(2)
        call()
        assert torch.get_num_threads() == 2  # once per process: a later choice of the user stands
        monkeypatch.setattr(rt, "_threads_settled", False)
        monkeypatch.setattr(rt, "_THREADS_AT_IMPORT", 4)  # the user called torch.set_num_threads(2) before
        call()
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(rt, "_threads_settled", False)
        monkeypatch.setattr(rt, "_THREADS_AT_IMPORT", 2)
        monkeypatch.setenv("FREQPURE_THREAD_POLICY", "torch")
        call()
        assert torch.get_num_threads() == 2  # torch's own defaults asked for
        monkeypatch.delenv("FREQPURE_THREAD_POLICY")
        monkeypatch.setattr(rt, "_threads_settled", False)
        configure_threads(2)  # what commands and --threads do: purifiers then leave the count alone
        call()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow  # a fresh interpreter importing torch first: seconds idle, a minute on a loaded machine
def test_import_torch_first_still_gets_the_thread_policy() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "FREQPURE_THREAD_POLICY")}
    env.update(PYTHONPATH=REPO_SRC, FREQPURE_THREADS="1")
    code = ("import torch, freqpure\n"
            "before = torch.get_num_threads()\n"
            "freqpure.DiffPure(lambda x, t: torch.zeros_like(x), 10, 1)(torch.rand(1, 3, 8, 8))\n"
            "print(before, torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "1"


@pytest.mark.slow  # a fresh interpreter importing torch: seconds idle, a minute on a loaded machine
def test_import_freqpure_sets_the_wait_policy_before_torch_loads() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "FREQPURE_THREAD_POLICY")}
    env["PYTHONPATH"] = REPO_SRC
    code = "import os, freqpure; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"


@pytest.mark.data
def test_purify_manifest_records_the_resolved_precision(tmp_path, real_images) -> None:
    import json

    from freqpure.cli.main import main
    from freqpure.imageio import write_png

    (tmp_path / "in").mkdir()
    write_png(real_images[0], tmp_path / "in" / "a.png")
    for flag, want in ((None, "fp32"), ("bf16", "bf16")):  # auto means fp32 under the tests' FREQPURE_PRECISION
        out = tmp_path / f"out-{want}"
        extra = ["--precision", flag] if flag else []
        assert main(["purify", str(tmp_path / "in"), "--out", str(out), "--model", model_name("cifar10-ddpm-small"),
                     "--method", "diffpure", "--rounds", "20:1", "--device", "cpu", "--threads", "1", *extra]) == 0
        assert json.loads((out / "manifest.json").read_text())["settings"]["precision"] == want
    with pytest.raises(SystemExit):  # argparse refuses a value outside auto, fp32, bf16
        main(["purify", str(tmp_path / "in"), "--out", str(tmp_path / "x"), "--precision", "fp16"])


def test_a_run_dir_from_before_the_precision_key_resumes_at_any_precision(tmp_path) -> None:
    import yaml

    from freqpure.config import dump_yaml, to_dict
    from freqpure.errors import FreqpureError
    from freqpure.evaluation.config import load_eval_config
    from freqpure.evaluation.runner import prepare_run_dir

    cfg = with_resolved_precision(load_eval_config(None, ["purifier.precision=fp32"]))
    old = to_dict(cfg)
    del old["purifier"]["precision"]  # a config.yaml written before precision existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    prepare_run_dir(tmp_path, cfg, resume=True, write=False)  # same run: accepted
    # another precision continues the run (each record names its own, issue #21); a changed attack does not
    prepare_run_dir(tmp_path, with_resolved_precision(load_eval_config(None, ["purifier.precision=bf16"])),
                    resume=True, write=False)
    with pytest.raises(FreqpureError, match="attacks"):
        prepare_run_dir(tmp_path, with_resolved_precision(load_eval_config(None, ["purifier.precision=fp32",
                                                                                  "attacks.0.steps=3"])),
                        resume=True, write=False)
    assert "precision: fp32" in dump_yaml(cfg)


def test_evaluate_precision_flag_sets_the_purifier_key(capsys) -> None:
    from freqpure.cli.main import main

    assert main(["evaluate", "--out", "unused", "--print-config", "--precision", "bf16"]) == 0
    assert "precision: bf16" in capsys.readouterr().out
    assert main(["evaluate", "--out", "unused", "--print-config", "--precision", "bf16",
                 "--set", "purifier.precision=fp32"]) == 2
    assert "given both by --set and by --precision" in capsys.readouterr().err
