"""``freqpure table``: one markdown table from several ``freqpure evaluate`` runs."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "table",
        help="collect finished evaluation runs into one markdown table (defences x attacks)",
        description="Read RUN_DIR/results.json of each run and print one markdown table: a row per run "
                    "(defence settings, n, clean accuracy, accuracy under each attack, worst case, time), "
                    "followed by every run's attack settings.",
        epilog="example:\n  freqpure table runs/none runs/diffpure runs/freqpure --out runs/table.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dirs", metavar="RUN_DIR", type=Path, nargs="+", help="finished evaluation run directories")
    p.add_argument("--out", type=Path, help="also write the table to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freqpure._fileio import atomic_path
    from freqpure.evaluation.table import load_results, render_table

    text = render_table([load_results(d) for d in args.run_dirs])
    print(text, end="")
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text)
    return 0
