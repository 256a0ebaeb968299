"""What purification costs on clean images: classifier accuracy before and after DiffPure / FreqPure.

The bundled-model quality targets (issue #3) are judged this way on >= 1,000 real CIFAR-10 test images:
FreqPure keeps the bundled classifier within 4 points of its unpurified accuracy, DiffPure at t* = 100
within 10 points.

    python benchmarks/purified_accuracy.py --n 1000
    python benchmarks/purified_accuracy.py --n 256 --sweep     # compare a few FreqPure settings
    python benchmarks/purified_accuracy.py --classifier cifar10-resnet-small --classifier cifar10-resnet-small-pa

Several ``--classifier`` flags judge every classifier on the same purified images.

Prints a markdown table (accuracy, drop in points, 95% Wilson interval, seconds per image).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import freqpure
from freqpure.config import PurifierConfig, build_purifier
from freqpure.data import eval_subset
from freqpure.purifiers import combine_draws
from freqpure.samplers import StepNoise

DEFAULT_ROWS = {
    "FreqPure (defaults)": PurifierConfig(),
    "DiffPure t*=100, 100 DDPM steps": PurifierConfig(method="diffpure", rounds="100:100"),
    "DiffPure t*=0.1, VP-SDE Euler 100 steps": PurifierConfig(method="diffpure", rounds="100:100", sampler="sde"),
    "DiffPure t*=100, 20 DDPM steps": PurifierConfig(method="diffpure", rounds="100:20"),
    "FreqPure r=3, t*=100, 5 steps (robustness table)": PurifierConfig(rounds="100:5", amp_radius=3, phase_radius=3),
    "DiffPure t*=100, 5 DDPM steps (robustness table)": PurifierConfig(method="diffpure", rounds="100:5"),
}
SWEEP_ROWS = {
    "FreqPure r=10, t*=100, 20 steps": PurifierConfig(rounds="100:20"),
    "FreqPure r=3, t*=100, 20 steps": PurifierConfig(rounds="100:20", amp_radius=3, phase_radius=3),
    "FreqPure r=6, t*=100, 20 steps": PurifierConfig(rounds="100:20", amp_radius=6, phase_radius=6),
    "FreqPure r=10, t*=200, 20 steps": PurifierConfig(rounds="200:20"),
    "FreqPure r=10, official mode, denoised ref": PurifierConfig(rounds="100:20", mode="official",
                                                                  reference="denoised"),
    "FreqPure r=3, v2 plan 20:5*5,50:5*5": PurifierConfig(rounds="20:5*5,50:5*5", amp_radius=3, phase_radius=3),
}


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--ensemble", type=int, default=1, help="majority vote over this many purifications")
    parser.add_argument("--classifier", action="append", default=None,
                        help="classifier name or weights file; repeat to judge several on the same purified images "
                        "(default: cifar10-resnet-small)")
    parser.add_argument("--diffusion", default="cifar10-ddpm-small")
    parser.add_argument("--sweep", action="store_true", help="compare FreqPure settings instead")
    parser.add_argument("--only", default=None, help="run only the rows whose name contains this text")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = eval_subset(args.n, seed=0)
    names = args.classifier or ["cifar10-resnet-small"]
    classifiers = {name: freqpure.load_classifier(name) for name in names}
    eps_model = freqpure.load_diffusion(args.diffusion)
    rows = SWEEP_ROWS if args.sweep else DEFAULT_ROWS
    if args.only:
        rows = {name: cfg for name, cfg in rows.items() if args.only in name}

    def accuracy(predict) -> tuple[dict[str, int], float]:
        """``predict(x, batch_index) -> {classifier: labels}``; correct counts and seconds per image."""
        correct, started = dict.fromkeys(classifiers, 0), time.perf_counter()
        for b, start in enumerate(range(0, args.n, args.batch)):
            y = data.y[start : start + args.batch]
            for name, labels in predict(data.x[start : start + args.batch], b).items():
                correct[name] += int((labels == y).sum())
        return correct, (time.perf_counter() - started) / args.n

    print(f"n={args.n} (class-balanced test subset), classifiers {', '.join(names)}, diffusion {args.diffusion}, "
          f"ensemble {args.ensemble}, seed {args.seed}, torch {torch.__version__}, {args.threads} threads")
    print("| defence | classifier | settings | accuracy | drop (points) | 95% interval | s / image |")
    print("|---|---|---|---|---|---|---|")
    with torch.no_grad():
        base, base_time = accuracy(lambda x, b: {n: c(x).argmax(-1) for n, c in classifiers.items()})
        for name in names:
            lo, hi = wilson(base[name], args.n)
            print(f"| none | {name} | - | {base[name] / args.n:.2%} | - | [{lo:.1%}, {hi:.1%}] | "
                  f"{base_time / len(names):.4f} |")
        for row, cfg in rows.items():
            purifier = build_purifier(cfg, eps_model, seed=args.seed)
            defended = freqpure.PurifiedClassifier(classifiers[names[0]], purifier, ensemble=args.ensemble)

            def predict(x, b, d=defended):
                purified = d.purify(x, StepNoise(args.seed).child(b))  # one purification, every classifier
                return {n: combine_draws(c(purified).view(args.ensemble, len(x), -1)).argmax(-1)
                        for n, c in classifiers.items()}

            correct, per_image = accuracy(predict)
            settings = (f"rounds {cfg.rounds}, {cfg.sampler}" + (
                f", r_a {cfg.amp_radius:g}, r_p {cfg.phase_radius:g}, delta {cfg.delta:g}, {cfg.effective()['mode']}, "
                f"ref {cfg.effective()['reference']}" if cfg.method == "freqpure" else ""))
            for name in names:
                lo, hi = wilson(correct[name], args.n)
                print(f"| {row} | {name} | {settings} | {correct[name] / args.n:.2%} | "
                      f"{100 * (base[name] - correct[name]) / args.n:+.1f} | [{lo:.1%}, {hi:.1%}] | "
                      f"{per_image:.4f} |", flush=True)


if __name__ == "__main__":
    main()
