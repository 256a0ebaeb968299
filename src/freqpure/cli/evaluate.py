"""``freqpure evaluate``: clean and robust accuracy of a (purified) classifier under adaptive attacks."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from freqpure.config import dump_yaml
    from freqpure.evaluation.config import load_eval_config
    from freqpure.evaluation.runner import evaluate

    cfg = load_eval_config(args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    results = evaluate(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    if results is not None:
        print((args.out / "results.md").read_text())
        print(f"results: {args.out / 'results.json'}")
    return 0
