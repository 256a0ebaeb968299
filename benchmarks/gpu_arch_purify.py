"""Purify 64 images with the published NCSN++ (CIFAR-10, 32x32) and ADM (ImageNet 256x256) architectures,
random weights (the architecture is what costs; weights change nothing about the speed), fp32 and bf16.

    python benchmarks/gpu_arch_purify.py --device cuda --n 64 --rounds 100:5

Prints one row per architecture and precision: seconds, images per second, peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from freqpure import DiffPure, StepNoise
from freqpure.models._archs import ARCHS, wrap_diffusion
from freqpure.models._specs import PUBLISHED

ARCH_SPECS = {"ncsnpp": ("diffpure-cifar10-ncsnpp", 32), "adm": ("guided-diffusion-imagenet256-uncond", 256)}


def build(arch: str, device: str):
    spec_name, size = ARCH_SPECS[arch]
    config = dict(PUBLISHED[spec_name].config)
    torch.manual_seed(0)
    with torch.device(device):
        net = ARCHS[arch].build(config)
    eps = wrap_diffusion(net, ARCHS[arch].eps_kwargs(config) if ARCHS[arch].eps_kwargs else {}, spec_name)
    return eps.to(device).eval().requires_grad_(False), size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", default="100:5")
    ap.add_argument("--archs", default="ncsnpp,adm")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    print(f"{'arch':>7} {'size':>5} {'precision':>9} {'seconds':>8} {'images/s':>9} {'peak GiB':>9}")
    for arch in args.archs.split(","):
        eps, size = build(arch, args.device)
        x = torch.rand(args.n, 3, size, size, generator=torch.Generator().manual_seed(0)).to(args.device)
        for precision in args.precisions.split(","):
            purifier = DiffPure(eps, rounds=args.rounds, precision=precision)
            with torch.no_grad():
                purifier(x[: min(2, args.n)], StepNoise(0))  # warm-up
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                for start in range(0, args.n, args.batch):
                    out = purifier(x[start : start + args.batch], StepNoise(start))
                    assert torch.isfinite(out).all(), f"{arch} {precision}: non-finite output"
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
            rows.append({"arch": arch, "size": size, "precision": precision, "seconds": dt, "images_per_s": args.n / dt,
                         "peak_gib": peak, "n": args.n, "rounds": args.rounds, "batch": args.batch})
            print(f"{arch:>7} {size:>5} {precision:>9} {dt:>8.2f} {args.n / dt:>9.2f} {peak:>9.2f}", flush=True)
        del eps
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
