"""``freqpure evaluate``: clean and robust accuracy of a (purified) classifier under adaptive attacks."""

from __future__ import annotations

import argparse
from pathlib import Path

from freqpure.cli.common import add_config_args, add_precision_arg, add_runtime_args, apply_runtime_args

__all__ = ["register", "run"]

EPILOG = """examples:
  freqpure evaluate --config configs/cifar10-freqpure-pgd-linf-bundled.yaml --out runs/fp-linf
  freqpure evaluate --config configs/cifar10-freqpure-pgd-linf-bundled.yaml --set data.n=16 --set attacks.0.eot=4 \\
      --out runs/fp-small
  freqpure evaluate --config ... --out runs/fp-linf --resume        # continue a killed run
  torchrun --standalone --nproc_per_node 2 -m freqpure evaluate --config ... --out runs/fp-linf   # sharded
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="clean and robust accuracy under adaptive attacks (PGD-EOT, BPDA, AutoAttack)",
        description="Attack a (purified) classifier and report standard and robust accuracy with 95% Wilson "
                    "intervals. Results go to --out: config.yaml, samples.jsonl, results.json, results.md, "
                    "examples.npz.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, "the evaluation", example="--set data.n=64 --set attacks.0.eot=4")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="run directory for the results")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (same config required)")
    p.add_argument("--diffusion", metavar="NAME|PATH", help="diffusion model (= --set purifier.diffusion=...)")
    p.add_argument("--classifier", metavar="NAME|PATH", help="classifier (= --set classifier.name=...)")
    p.add_argument("--data-dir", metavar="DIR", help="data folder (= --set data.data_dir=...)")
    add_runtime_args(p)
    add_precision_arg(p)
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freqpure.config.io import dump_yaml
    from freqpure.errors import UsageError
    from freqpure.evaluation.config import load_eval_config
    from freqpure.evaluation.runner import evaluate

    overrides = list(args.overrides)
    given = {item.partition("=")[0].strip() for item in overrides}
    flags = {"purifier.precision": ("--precision", args.precision),
             "purifier.diffusion": ("--diffusion", args.diffusion),
             "classifier.name": ("--classifier", args.classifier), "data.data_dir": ("--data-dir", args.data_dir),
             "device": ("--device", None if args.device == "auto" else args.device), "seed": ("--seed", args.seed)}
    for key, (flag, value) in flags.items():  # each flag is a named shortcut for one config key
        if value is None:
            continue
        if key in given:
            raise UsageError(f"{key} given both by --set and by {flag}; give it once")
        overrides.append(f"{key}={value}")
    cfg = load_eval_config(args.config, overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    apply_runtime_args(args)
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder; give a new folder (or a run folder to resume)")
    results = evaluate(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    if results is not None:  # the table; the protocol, sanity details and timing stay in results.md
        print((args.out / "results.md").read_text().split("\n## ")[0].rstrip())
        print(f"\nprotocol, sanity checks and time: {args.out / 'results.md'}; "
              f"all numbers: {args.out / 'results.json'}")
    return 0
