"""Entry point of the ``freqpure`` command.

Every module in :mod:`freqpure.cli` that defines ``register(subparsers)`` adds one sub-command;
``register`` sets ``func`` on its parser to a callable ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import sys
from typing import NoReturn

import freqpure.cli as cli_pkg

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``freqpure CMD: error: ...``, exit 2) and a hint for values that start
    with ``-`` (``--rounds -5:1`` reads as a flag: ``--rounds=-5:1`` passes the value, which is then checked)."""

    def error(self, message: str) -> NoReturn:
        if "expected one argument" in message:
            flag = message.split(":")[0].replace("argument ", "").split("/")[-1].strip()
            message += f" (a value that starts with '-' must be attached: {flag}=VALUE)"
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="freqpure",
        description="Diffusion purification from the frequency domain (FreqPure, DiffPure) and adaptive attacks.",
    )
    from freqpure import __version__

    parser.add_argument("--version", action="version", version=f"freqpure {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="print the full traceback for user errors too (for bug reports)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda m: m.name):
        if info.name in {"main", "common"} or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"freqpure.cli.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from freqpure.errors import FreqpureError

    try:
        from freqpure.runtime import configure_threads

        # one thread policy for every command (docs/usage.md, "Threads and precision")
        configure_threads(_check_threads(getattr(args, "threads", None)))
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader went away (`freqpure models | head`): not an error
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter flushes it at exit
        return 0
    except KeyboardInterrupt:
        if args.traceback:
            raise
        hint = "; resume with --resume" if getattr(args, "resume", None) is not None else ""
        print(f"freqpure {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except (FreqpureError, OSError) as err:
        # User-facing errors (bad input, missing or unwritable files, a full disk): one line.
        # Anything else is a bug and keeps its traceback.
        if args.traceback:
            raise
        text = str(err) if isinstance(err, FreqpureError) else _os_error_line(err)
        print(f"freqpure {args.command}: error: {text}", file=sys.stderr)
        return 2


def _check_threads(threads: int | None) -> int | None:
    """``--threads`` within 1 .. max(64, 4 x the cores): torch crashes (a segfault) on absurd counts."""
    from freqpure.errors import UsageError

    limit = max(64, 4 * (os.cpu_count() or 1))
    if threads is not None and not 1 <= threads <= limit:
        raise UsageError(f"--threads must be in 1..{limit} (this machine has {os.cpu_count()} cores), got {threads}")
    return threads


def _os_error_line(err: OSError) -> str:
    """``[Errno 28] No space left on device: 'x'`` → ``x: No space left on device``."""
    if err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
