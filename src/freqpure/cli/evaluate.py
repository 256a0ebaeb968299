"""``freqpure evaluate``: clean and robust accuracy of a (purified) classifier under adaptive attacks."""

from __future__ import annotations

import argparse
from pathlib import Path

from freqpure.cli.common import add_precision_arg

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
    p.add_argument("--config", type=Path, help="YAML config (see configs/); default: the built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.n=32 --set attacks.0.eps=4/255 (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="run directory for the results")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (same config required)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: $FREQPURE_THREADS, else the project's thread policy)")
    add_precision_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freqpure.config import dump_yaml
    from freqpure.errors import UsageError
    from freqpure.evaluation.config import load_eval_config
    from freqpure.evaluation.runner import evaluate
    from freqpure.runtime import configure_threads

    overrides = list(args.overrides)
    if args.precision is not None:  # --precision is purifier.precision (ε-model and classifier)
        if any(item.partition("=")[0].strip() == "purifier.precision" for item in overrides):
            raise UsageError("purifier.precision given both by --set and by --precision; give it once")
        overrides.append(f"purifier.precision={args.precision}")
    cfg = load_eval_config(args.config, overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    configure_threads(args.threads)
    results = evaluate(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    if results is not None:
        print((args.out / "results.md").read_text())
        print(f"results: {args.out / 'results.json'}")
    return 0
