"""Does bf16 change the science? fp32 against bf16 on the same images and seeds (bundled models).

1. ``clean``: the defence of ``--config`` (default: the README table's DiffPure row) predicts ``--n-clean``
   class-balanced test images once in fp32 and once in bf16, with the same noise; prints how many
   purified predictions differ (target: at most 1% of the images) and both clean accuracies.
2. ``robust``: ``freqpure evaluate`` of that row with only its full-gradient PGD attack, on ``--n-robust``
   images, once per precision (run dirs under ``--out``, resumable), then the paired exact McNemar test
   of the per-image robust outcomes (and of the clean ones).

    python benchmarks/precision_equivalence.py --n-clean 512 --n-robust 32 --out runs/precision-equiv

``--pgd-steps`` shortens the attack (the table's is 20); say so when you quote the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from freqpure.config import with_resolved_precision  # noqa: E402
from freqpure.evaluation.components import build_defence, load_eval_data, load_models  # noqa: E402
from freqpure.evaluation.config import SanityConfig, load_eval_config  # noqa: E402
from freqpure.evaluation.paired import compare_samples  # noqa: E402
from freqpure.evaluation.results import read_samples  # noqa: E402
from freqpure.evaluation.runner import evaluate  # noqa: E402
from freqpure.runtime import configure_threads  # noqa: E402
from freqpure.samplers import StepNoise  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _with_precision(cfg, precision: str):
    return with_resolved_precision(dataclasses.replace(cfg, purifier=dataclasses.replace(cfg.purifier,
                                                                                         precision=precision)))


def clean_agreement(cfg, n: int, batch: int) -> None:
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, n=n))
    data = load_eval_data(cfg.data)
    classifier, eps_model = load_models(cfg, torch.device("cpu"))
    preds = {}
    for precision in ("fp32", "bf16"):
        defence = build_defence(_with_precision(cfg, precision), classifier, eps_model)
        t0 = time.perf_counter()
        out = []
        for b, start in enumerate(range(0, n, batch)):
            pos = list(range(start, min(start + batch, n)))
            out.append(defence.predict(data.images(pos), StepNoise(cfg.seed * 1_000_003 + b)))
        preds[precision] = torch.cat(out)
        print(f"clean {precision}: {time.perf_counter() - t0:.1f} s, load {os.getloadavg()[0]:.2f}", flush=True)
    labels = data.labels
    differ = int((preds["fp32"] != preds["bf16"]).sum())
    acc = {p: float((v == labels).float().mean()) for p, v in preds.items()}
    print(f"\n## clean-purified predictions, {n} images ({cfg.purifier.method} {cfg.purifier.rounds}, "
          f"ensemble {cfg.defence.ensemble}, seed {cfg.seed})")
    print(f"differ: {differ} / {n} = {differ / n:.2%} (target <= 1%); "
          f"accuracy fp32 {acc['fp32']:.1%}, bf16 {acc['bf16']:.1%}")


def robust_pair(cfg, n: int, steps: int | None, out: Path, precisions: tuple[str, ...] = ("fp32", "bf16")) -> None:
    attack = next(a for a in cfg.attacks if a.name == "pgd" and a.gradient == "full")
    if steps is not None:
        attack = dataclasses.replace(attack, steps=steps)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, n=n), attacks=[attack],
                              sanity=SanityConfig(enabled=False))
    dirs = {precision: out / precision for precision in ("fp32", "bf16")}
    for precision in precisions:
        t0 = time.perf_counter()
        evaluate(_with_precision(cfg, precision), dirs[precision], resume=(dirs[precision] / "config.yaml").exists(),
                 progress=False)
        print(f"robust {precision}: {time.perf_counter() - t0:.1f} s, load {os.getloadavg()[0]:.2f}", flush=True)
    if not all((d / "samples.jsonl").exists() for d in dirs.values()):
        print("robust: pairing needs both runs; run the other precision (same --out) and rerun with --precisions ''")
        return
    a, b = read_samples(dirs["fp32"]), read_samples(dirs["bf16"])
    paired = compare_samples(a, b)
    common = paired.common
    print(f"\n## {attack.label or 'PGD full'} ({attack.steps} steps, EOT {attack.eot}), {len(common)} images, "
          f"{cfg.purifier.method} {cfg.purifier.rounds}, ensemble {cfg.defence.ensemble}, seed {cfg.seed}")
    print("| outcome | fp32 | bf16 | fp32 right, bf16 wrong | bf16 right, fp32 wrong | McNemar p |")
    print("|---|---|---|---|---|---|")
    for row in paired.rows:
        print(f"| {row.metric} | {row.correct_a / row.n:.1%} | {row.correct_b / row.n:.1%} | {row.only_a} | "
              f"{row.only_b} | {row.p:.3f} |")
    differ = sum(a[i].clean_pred != b[i].clean_pred for i in common)
    print(f"clean predictions differ on {differ} / {len(common)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "cifar10-diffpure-table-bundled.yaml")
    ap.add_argument("--parts", default="clean,robust")
    ap.add_argument("--n-clean", type=int, default=512)
    ap.add_argument("--n-robust", type=int, default=32)
    ap.add_argument("--pgd-steps", type=int, default=None, help="override the attack's steps (default: the config's)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("runs/precision-equivalence"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precisions", default="fp32,bf16",
                    help="robust runs to (re)run here, comma-separated; run fp32 and bf16 as two processes in "
                         "parallel with the same --out, then once with --precisions '' to pair them")
    args = ap.parse_args()
    configure_threads(args.threads)
    cfg = load_eval_config(args.config)
    print(f"# {args.config.name}, threads {torch.get_num_threads()}, load at start {os.getloadavg()[0]:.2f}")
    if "clean" in args.parts:
        clean_agreement(cfg, args.n_clean, args.batch)
    if "robust" in args.parts:
        robust_pair(cfg, args.n_robust, args.pgd_steps, args.out,
                    tuple(p for p in args.precisions.split(",") if p))
    print(f"# load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
