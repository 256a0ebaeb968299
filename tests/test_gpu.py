"""GPU checks (``-m gpu``; skipped without CUDA, run by scripts/gpu_check.sh): the same purification on
CUDA as on the CPU, and bf16 on CUDA."""

from __future__ import annotations

import pytest
import torch

import freqpure
from freqpure import DiffPure, FreqPure, PurifiedClassifier, StepNoise
from helpers import model_name

pytestmark = pytest.mark.gpu


class CpuNoise(StepNoise):
    """The CPU generator's draws, moved to the device: the same noise on CPU and CUDA."""

    def __call__(self, key: int, like: torch.Tensor) -> torch.Tensor:
        return super().__call__(key, like.detach().cpu()).to(like.device)

    def child(self, salt: int) -> CpuNoise:
        base = super().child(salt)  # checks the salt; keep the whole path, not only the root seed
        return CpuNoise(base.seed, base.path)


def _models(device):
    eps = freqpure.load_diffusion(model_name("cifar10-ddpm-small"), device=device).eval().requires_grad_(False)
    clf = freqpure.load_classifier(model_name("cifar10-resnet-small"), device=device).eval().requires_grad_(False)
    return eps, clf


def test_purify_on_cuda_equals_cpu(real_images):
    x = real_images[:8]
    out = {}
    for device in ("cpu", "cuda"):
        eps, _ = _models(device)
        with torch.no_grad():
            out[device] = FreqPure(eps, 3, 3, t_star=100, steps=5)(x.to(device), CpuNoise(3)).cpu()
    # TF32 may be on for CUDA convolutions: allow its rounding, nothing more
    torch.testing.assert_close(out["cuda"], out["cpu"], rtol=0, atol=2e-2)
    assert float((out["cuda"] - out["cpu"]).abs().mean()) < 2e-3


def test_bf16_on_cuda_runs_and_keeps_fp32_io(real_images):
    eps, clf = _models("cuda")
    x = real_images[:8].cuda()
    purifier = DiffPure(eps, 100, 5, precision="bf16", checkpoint=True)
    defended = PurifiedClassifier(clf, purifier, vote="logits", precision="bf16")
    xi = x.clone().requires_grad_(True)
    scores = defended(xi, CpuNoise(1))
    scores.logsumexp(1).sum().backward()
    assert scores.dtype == torch.float32 and xi.grad.dtype == torch.float32
    assert torch.isfinite(xi.grad).all() and float(xi.grad.abs().sum()) > 0
    with torch.no_grad():
        ref = DiffPure(eps, 100, 5)(x, CpuNoise(1))
        low = DiffPure(eps, 100, 5, precision="bf16")(x, CpuNoise(1))
    assert float((low - ref).abs().mean()) < 0.01


def test_auto_precision_on_cuda_is_bf16_where_supported(monkeypatch):
    from freqpure.runtime import resolve_precision

    monkeypatch.delenv("FREQPURE_PRECISION", raising=False)
    assert resolve_precision("auto", "cuda") == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")


# ---------------------------------------------------------------------------------------------
# #25: noise made on the device, and no host-device sync inside a reverse step or a PGD iteration
# ---------------------------------------------------------------------------------------------
def test_noise_schemes_give_the_same_numbers_on_cuda_and_cpu():
    from freqpure.noise import CounterNoise
    from freqpure.samplers import DrawNoise

    like = torch.empty(64, 3, 32, 32)
    old = DrawNoise(StepNoise(5).rows(64))
    assert torch.equal(old(3, like.cuda()).cpu(), old(3, like))  # host draws, pinned non-blocking copy
    new = DrawNoise(CounterNoise(5).rows(64))
    gpu, cpu = new(3, like.cuda()), new(3, like)
    assert gpu.device.type == "cuda"  # made there
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-5)  # Box–Muller's float rounding only


def _without_sync(fn):
    """``fn()`` under ``torch.cuda.set_sync_debug_mode("error")``: any host-device sync raises."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("scheme", ["blake2b-philox-v2", "counter-v1"])
def test_purification_and_an_attack_iteration_do_not_sync(real_images, scheme):
    from freqpure._checks import trusted_images
    from freqpure.attacks.eot import EOTGradient
    from freqpure.attacks.gradients import attack_purifier
    from freqpure.attacks.pgd import pgd
    from freqpure.noise import make_noise

    eps, clf = _models("cuda")
    x, y = real_images[:4].cuda(), torch.arange(4, device="cuda")
    purifiers = [FreqPure(eps, 3, 3, t_star=100, steps=3), FreqPure(eps, 3, 3, rounds="20:2*2", variant="official"),
                 DiffPure(eps, 100, 3), DiffPure(eps, 100, 3, sampler="sde")]
    for p in purifiers:
        with torch.no_grad():
            p(x, make_noise(0, (), scheme))  # warm-up: cached masks, cuDNN plans, pinned host blocks
        with torch.no_grad(), trusted_images():  # the input was validated above: the one edge sync
            out = _without_sync(lambda p=p: p(x, make_noise(1, (), scheme)))
        assert torch.isfinite(out).all()
    for purifier in (DiffPure(eps, 100, 3), FreqPure(eps, 3, 3, rounds="20:2*2", variant="official")):
        defended = PurifiedClassifier(clf, attack_purifier(purifier, "full"), vote="softmax")
        oracle = EOTGradient(defended, eot=2, seed=make_noise(2, (), scheme))
        oracle(x, y)  # warm-up, and the attack run's one checkpoint decision (reads the free memory)
        with trusted_images():
            res = _without_sync(lambda oracle=oracle: pgd(oracle, x, y, norm="linf", eps=8 / 255, steps=2,
                                                          generator=make_noise(3, (), scheme).rng()))
        assert torch.isfinite(res.loss).all() and float(res.first_grad_norm.min()) > 0


def test_batch_size_auto_on_cuda_fits_and_changes_no_number(tmp_path):
    """#25 item 4 on a GPU: ``batch_size: auto`` probes the device once, records its choice, and (image-v1) gives
    the records of a fixed batch size."""
    import json

    import yaml

    from freqpure.evaluation import evaluate, load_eval_config

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"attacks": [{"name": "pgd", "steps": 2, "eot": 2}]}))
    common = ["name=gpu-auto", "device=cuda", "data.n=4", "purifier.rounds=30:2", "defence.ensemble=2",
              "sanity.enabled=false", "noise_scheme=counter-v1", "noise_addressing=image-v1",
              f"classifier.name={model_name('cifar10-resnet-small')}",
              f"purifier.diffusion={model_name('cifar10-ddpm-small')}"]
    runs = {size: evaluate(load_eval_config(base, [*common, f"batch_size={size}"]), tmp_path / size,
                           progress=False) for size in ("2", "auto")}
    assert runs["auto"].protocol["batch_size"].startswith("4: auto on cuda")
    recs = {size: {r["index"]: r for r in map(json.loads, (tmp_path / size / "samples.jsonl").read_text().splitlines())}
            for size in runs}
    assert sorted(recs["2"]) == sorted(recs["auto"])
    for i, a in recs["2"].items():
        b = recs["auto"][i]
        assert (a["clean_pred"], a["robust"]) == (b["clean_pred"], b["robust"]), i
        for label, outcome in a["attacks"].items():
            assert outcome["pred"] == b["attacks"][label]["pred"], (i, label)
