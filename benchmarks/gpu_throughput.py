"""Throughput of the study's hot paths against the bare ε-model floor, all in one run (#25 item 6).

For DiffPure and FreqPure (official variant) at the v2 plan, the two workloads the study spends its time
on, built with the evaluation's own code (``build_defence``, ``attack_model``, ``EOTGradient``):

* ``predict``: the defended prediction of ``--batch`` images (vote over ``--ensemble`` purifications,
  batched into one UNet batch of batch × ensemble);
* ``attack``: one EOT gradient of ``--batch`` images (``--eot`` draws, the matched surrogate
  ``--surrogate``, UNet batch batch × eot), what every PGD iteration calls;

each in fp32 and bf16, with each noise scheme (``--schemes``) and each way of running the ε-model
(``--compile``: ``none``, eager; ``default``, ``torch.compile``; ``reduce-overhead``, ``torch.compile`` with
CUDA graphs; issue #25 item 5; the one-off compile seconds are reported with the row). The ε-model is
wrapped to count the images it processes (an image-UNet-call = one image through the UNet once). The floor
is a bare loop of the same UNet at the same UNet batch in the same precision, without a graph for ``predict`` and with
forward + backward for ``attack``. Reported per row: image-UNet-calls per second, the floor's, their
ratio (time / the floor's time for the same calls; 1.0 = nothing but the ε-model) and the ε-model's
share of the time (1 / ratio; an estimate from the floor, since timing inside the model would need a
sync per call on a GPU).

    python benchmarks/gpu_throughput.py --device cpu --threads 1                    # small CPU sizes
    python benchmarks/gpu_throughput.py --device cuda --batch 64 --json out.json    # scripts/gpu_check.sh

Times are the best of ``--repeats`` after a warm-up; each row's floor is timed right after it, so that a
changing machine load hits both alike; the load average is printed with every row.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch
from torch import nn

import freqpure
from freqpure.attacks.eot import EOTGradient
from freqpure.evaluation import load_eval_config
from freqpure.evaluation.components import build_defence
from freqpure.noise import COUNTER_SCHEME, make_noise
from freqpure.runtime import configure_threads, run_in_precision
from freqpure.samplers import NOISE_SCHEME

METHODS = {"diffpure-v2": ["purifier.method=diffpure"],
           "freqpure-official-v2": ["purifier.method=freqpure", "purifier.variant=official",
                                    "purifier.amp_radius=3", "purifier.phase_radius=3", "purifier.delta=0.3"]}


class CountingEps(nn.Module):
    """The ε-model, counting the images it processes (attributes such as ``image_size`` fall through)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.images = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.inner(x, t)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def best_of(fn, repeats: int, device: torch.device) -> float:
    """Best wall seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def floor_seconds_per_call(eps: nn.Module, batch: int, precision: str, grad: bool, device: torch.device,
                           repeats: int, calls: int = 3) -> float:
    """Seconds per image-UNet-call of a bare loop of ``calls`` UNet calls at ``batch`` (forward, or + backward)."""
    size, channels = eps.image_size, eps.channels
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen).to(device)
    t = torch.full((batch,), 30.0, device=device)

    def loop() -> None:
        for _ in range(calls):
            if grad:
                xr = x.detach().requires_grad_(True)
                out = run_in_precision(eps, precision, xr, t)
                torch.autograd.grad(out.float().square().mean(), xr)
            else:
                with torch.no_grad():
                    run_in_precision(eps, precision, x, t)

    return best_of(loop, repeats, device) / (calls * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None, help="images per call (default: 64 on GPU, 2 on CPU)")
    parser.add_argument("--ensemble", type=int, default=None, help="vote of (default: 10 on GPU, 2 on CPU)")
    parser.add_argument("--eot", type=int, default=None, help="EOT draws per gradient (default: 4 on GPU, 2 on CPU)")
    parser.add_argument("--rounds", default=None, help="plan (default: the v2 plan on GPU, 20:1,50:1 on CPU)")
    parser.add_argument("--surrogate", default=None, help="attack surrogate (default: 20:1*5,50:1*5 / 20:1,50:1)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--schemes", default=f"{NOISE_SCHEME},{COUNTER_SCHEME}")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--workloads", default="predict,attack")
    parser.add_argument("--compile", default="none", help="ε-model modes, comma-separated: none (eager), default, "
                        "reduce-overhead (torch.compile; the latter with CUDA graphs)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    threads = configure_threads(args.threads)
    batch = args.batch or (64 if gpu else 2)
    ensemble = args.ensemble or (10 if gpu else 2)
    eot = args.eot or (4 if gpu else 2)
    rounds = args.rounds or ("20:5*5,50:5*5" if gpu else "20:1,50:1")
    surrogate = args.surrogate or ("20:1*5,50:1*5" if gpu else "20:1,50:1")
    precisions = args.precisions.split(",")
    schemes = args.schemes.split(",")

    eps_raw = freqpure.load_diffusion("cifar10-ddpm-small", device=device).eval().requires_grad_(False)
    clf = freqpure.load_classifier("cifar10-resnet-small", device=device).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=gen).to(device)
    y = torch.arange(batch, device=device) % 10
    name = "gpu" if gpu else "cpu"
    print(f"device {device} ({torch.cuda.get_device_name(device) if gpu else name}), threads {threads}, "
          f"torch {torch.__version__}, batch {batch}, ensemble {ensemble}, eot {eot}, plan {rounds}, "
          f"surrogate {surrogate}, load {_load()}", flush=True)

    rows = []
    for mode, method, precision in [(m, meth, p) for m in args.compile.split(",") for meth in args.methods.split(",")
                                    for p in precisions]:
        eps = CountingEps(eps_raw if mode == "none" else torch.compile(eps_raw, mode=mode, dynamic=False))
        compile_seconds = 0.0
        cfg = load_eval_config(None, [
            f"batch_size={batch}", f"defence.ensemble={ensemble}", "defence.vote=majority",
            f"purifier.rounds={rounds}", f"purifier.precision={precision}", *METHODS[method],
            "attacks.0.name=pgd", f"attacks.0.eot={eot}", "attacks.0.gradient=surrogate",
            f"attacks.0.surrogate_rounds={surrogate}"])
        defence = build_defence(cfg, clf, eps)
        attack_model = defence.attack_model(cfg.attacks[0])
        for scheme in schemes:
            for workload in args.workloads.split(","):
                if workload == "predict":
                    unet_batch = batch * ensemble

                    def run(scheme=scheme, defence=defence) -> None:
                        defence.predict(x, make_noise(1, (), scheme))
                else:
                    unet_batch = batch * eot
                    oracle = EOTGradient(attack_model, eot=eot, seed=make_noise(2, (), scheme))

                    def run(oracle=oracle) -> None:
                        oracle(x, y)
                eps.images = 0
                t0 = time.perf_counter()
                run()  # count one call's images (the warm-up of best_of; it compiles a compiled model)
                _sync(device)
                compile_seconds = time.perf_counter() - t0 if mode != "none" else 0.0
                images = eps.images
                seconds = best_of(run, args.repeats, device)
                # the floor measured next to its row, so that a changing machine load hits both alike
                per_call = floor_seconds_per_call(eps_raw, unet_batch, precision, workload == "attack", device,
                                                  args.repeats)
                ratio = seconds / (images * per_call)
                row = {"method": method, "workload": workload, "precision": precision, "scheme": scheme,
                       "compile": mode, "first_call_seconds": compile_seconds,
                       "unet_batch": unet_batch, "seconds": seconds, "image_unet_calls": images,
                       "calls_per_s": images / seconds, "floor_calls_per_s": 1 / per_call,
                       "ratio_to_floor": ratio, "eps_model_share": 1 / ratio, "load": _load()}
                rows.append(row)
                print(f"{method} {workload} {precision} {scheme} {mode}: {seconds:.3f} s, "
                      f"{row['calls_per_s']:.0f} calls/s, floor {row['floor_calls_per_s']:.0f}, "
                      f"ratio {ratio:.2f}, load {row['load']}", flush=True)

    print("\n## gpu_throughput (image-UNet-calls per second; ratio = time / bare-UNet-loop time for the same calls)")
    print("| method | workload | precision | noise scheme | ε-model | UNet batch | calls/s | floor calls/s | ratio | "
          "ε share |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mode = r["compile"]
        if mode != "none":
            mode += f" (first call {r['first_call_seconds']:.0f} s)"
        print(f"| {r['method']} | {r['workload']} | {r['precision']} | {r['scheme']} | {mode} | {r['unet_batch']} | "
              f"{r['calls_per_s']:.0f} | {r['floor_calls_per_s']:.0f} | {r['ratio_to_floor']:.2f} | "
              f"{r['eps_model_share']:.0%} |")
    if args.json:
        meta = {"device": str(device), "threads": threads, "torch": torch.__version__, "batch": batch,
                "ensemble": ensemble, "eot": eot, "rounds": rounds, "surrogate": surrogate}
        with open(args.json, "w") as f:
            json.dump({"settings": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
