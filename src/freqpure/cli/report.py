"""freqpure report RUN...: a self-contained HTML report of evaluation runs, a demo or an analysis.

The page has inline CSS and every image embedded as a PNG data URI (no scripts, no external
assets): open it offline or mail it. One directory: a run, a demo or an analysis directory (the report
goes to DIR/report.html unless --out is given). Several run directories: one comparison page (--out
required). See freqpure.report for what each kind of directory holds.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from freqpure.cli.common import add_config_args, add_runtime_args, apply_runtime_args, load_command_config
from freqpure.errors import UsageError

__all__ = ["register", "run"]


@dataclass
class ReportSettings:
    """What the page shows: ``max_examples`` rows of the example grid (>= 0) and ``max_spectra`` examples
    with amplitude/phase spectra per defended run (>= 0)."""

    max_examples: int = 8
    max_spectra: int = 1

    def __post_init__(self) -> None:
        for key in ("max_examples", "max_spectra"):
            if getattr(self, key) < 0:
                raise UsageError(f"{key} must be >= 0, got {getattr(self, key)}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write a self-contained HTML report of runs, a demo or an analysis directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dirs", metavar="RUN", type=Path, nargs="+",
                   help="evaluation run, demo or analysis directory (several run dirs: a comparison)")
    p.add_argument("-o", "--out", type=Path, metavar="FILE",
                   help="output HTML file (default: RUN/report.html; required for several runs)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing output file that is not an earlier freqpure report (never a run's "
                        "own files)")
    p.add_argument("--max-examples", type=int, default=None, metavar="N",
                   help="rows of the example grid (default: 8)")
    p.add_argument("--max-spectra", type=int, default=None, metavar="N",
                   help="examples with amplitude/phase spectra per defended run (default: 1)")
    add_config_args(p, "report", example="--set max_examples=4")
    add_runtime_args(p, device=False, seed=False, progress=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freqpure._fileio import check_output_file
    from freqpure.errors import NotFoundError
    from freqpure.report import is_report, write_report

    apply_runtime_args(args)
    settings = load_command_config(ReportSettings, args, {"max_examples": args.max_examples,
                                                          "max_spectra": args.max_spectra})
    for run_dir in args.run_dirs:
        if not run_dir.is_dir():
            raise NotFoundError(f"run folder {run_dir} does not exist")
    if len(args.run_dirs) > 1 and args.out is None:
        raise UsageError("several runs make one comparison page: give -o/--out FILE")
    target = args.out if args.out is not None else args.run_dirs[0] / "report.html"
    check_output_file(target, "-o/--out" if args.out is not None else "report.html", force=args.force,
                      inputs=args.run_dirs, replaceable=is_report)  # before the work
    dirs = args.run_dirs[0] if len(args.run_dirs) == 1 else args.run_dirs
    path = write_report(dirs, args.out, max_examples=settings.max_examples, max_spectra=settings.max_spectra)
    print(path)
    return 0
