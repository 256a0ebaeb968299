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
    p.add_argument("--out", type=Path, help="also write the table to this file (never one of the runs' own files)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freqpure._fileio import atomic_path, check_output_file
    from freqpure.evaluation.table import load_results, render_table

    if args.out:  # before the work: a folder, an unwritable place, a run's own file or another file is refused
        check_output_file(args.out, "--out", force=args.force, inputs=args.run_dirs)
    text = render_table([load_results(d) for d in args.run_dirs])
    print(text, end="")
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text)
    return 0
