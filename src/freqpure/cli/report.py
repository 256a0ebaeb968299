"""``freqpure report RUN_DIR``: a self-contained HTML report of an evaluation run, a demo or an analysis.

The page has inline CSS and every image embedded as a PNG data URI (no scripts, no external
assets): open it offline or mail it. See :mod:`freqpure.report` for what each kind of directory
must hold.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write a self-contained HTML report of a run, demo or analysis directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="evaluation run, demo or analysis directory")
    p.add_argument("-o", "--out", type=Path, help="output HTML file (default: RUN_DIR/report.html)")
    p.add_argument("--max-examples", type=int, default=12, help="examples per image grid (default 12)")
    p.add_argument("--max-spectra", type=int, default=2, help="examples with spectra per run (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freqpure._fileio import check_writable_output
    from freqpure.errors import NotFoundError
    from freqpure.report import write_report

    if not args.run_dir.is_dir():
        raise NotFoundError(f"run folder {args.run_dir} does not exist")
    check_writable_output(args.out if args.out is not None else args.run_dir / "report.html",
                          "-o/--out" if args.out is not None else "report.html")  # before the work
    path = write_report(args.run_dir, args.out, max_examples=args.max_examples, max_spectra=args.max_spectra)
    print(path)
    return 0
