"""Helpers shared by the sub-commands: dataclass fields as flags, device and seed handling."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "add_config_args",
    "add_dataclass_flags",
    "add_precision_arg",
    "add_runtime_args",
    "apply_runtime_args",
    "dataclass_overrides",
    "load_command_config",
    "parse_optional_float",
    "resolve_device",
]


def parse_optional_float(text: str) -> float | None:
    """``"none"``/``"null"`` → None, else a float (for radii that can be disabled)."""
    return None if text.lower() in ("none", "null", "off") else float(text)


def _flag_type(annotation: Any):
    args = set(typing.get_args(annotation))
    if annotation is bool:
        return None
    if annotation is int:
        return int
    if annotation is float:
        return float
    if args == {float, type(None)}:
        return parse_optional_float
    return str


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = (),
                        prefix: str = "", help_prefix: str = "") -> None:
    """One ``--field-name`` flag per dataclass field (default ``None`` = not given on the command line)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(help_prefix or cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        kind = _flag_type(hints[f.name])
        help_text = f"(default: {f.default})"
        if kind is None:
            group.add_argument(flag, dest=prefix + f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            group.add_argument(flag, dest=prefix + f.name, type=kind, default=None, help=help_text)


def dataclass_overrides(args: argparse.Namespace, cls: type, *, prefix: str = "") -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line, as a dict."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, prefix + f.name, None)
        if value is not None:
            out[f.name] = value
    return out


def resolve_device(name: str | None) -> torch.device:
    """``--device``: ``auto`` → CUDA when available, else CPU; a device this machine lacks is an error
    (:func:`freqpure.evaluation.distributed.resolve_device`, the one resolver, with the flag's name)."""
    from freqpure.evaluation.distributed import resolve_device as resolve

    return resolve(name, what="--device")


# ------------------------------------------------------------------------------ one CLI vocabulary
# Every command spells the same thing the same way: --config FILE and --set KEY=VALUE for its settings
# dataclass (strict: unknown keys are refused), --diffusion / --classifier for models, --data-dir,
# --threads, --device, --seed, --no-progress.


def add_config_args(parser: argparse.ArgumentParser, what: str = "the command's", *, example: str) -> None:
    """``--config FILE`` and repeatable ``--set KEY=VALUE`` (checked strictly against the settings dataclass).

    ``example``: a ``--set`` this command accepts, shown in the help (each command has its own keys).
    """
    parser.add_argument("--config", type=Path, metavar="FILE", help=f"YAML file of {what} settings (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override one setting, e.g. {example} (repeatable; unknown keys are refused)")


def load_command_config(cls: type, args: argparse.Namespace, flags: dict[str, Any] | None = None) -> Any:
    """Settings of type ``cls``: defaults ← ``--config`` file ← ``--set`` overrides ← explicit ``flags``
    (:func:`freqpure.config.load_settings`, the one loader; a key given both by ``--set`` and by its own flag
    is an error)."""
    from freqpure.config.io import load_settings

    return load_settings(cls, getattr(args, "config", None), getattr(args, "overrides", None), flags)


def add_runtime_args(parser: argparse.ArgumentParser, *, device: bool = True, threads: bool = True,
                     seed: bool = True, progress: bool = True) -> None:
    """The shared run flags: ``--device``, ``--threads``, ``--seed``, ``--no-progress``."""
    if device:
        parser.add_argument("--device", default="auto", metavar="DEVICE",
                            help="cpu, cuda, cuda:N or auto (default: CUDA when available)")
    if threads:
        parser.add_argument("--threads", type=int, default=None, metavar="N",
                            help="CPU threads (default: $FREQPURE_THREADS, else the project's thread policy)")
    if seed:
        parser.add_argument("--seed", type=int, default=None, metavar="N",
                            help="seed of every random draw (default: the config's, else 0)")
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_precision_arg(parser: argparse.ArgumentParser, dest: str = "precision") -> None:
    """``--precision auto|fp32|bf16`` (default ``None`` = the config's value, whose default is ``auto``)."""
    from freqpure.runtime import PRECISIONS

    parser.add_argument("--precision", dest=dest, choices=PRECISIONS, default=None,
                        help="arithmetic of the diffusion model and the classifier: auto (bf16 on CPUs with "
                             "AMX-BF16 and on CUDA with bf16, else fp32), fp32 or bf16; inputs, outputs "
                             "and input gradients stay fp32 (default: the config's, else auto)")


def apply_runtime_args(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (through :func:`freqpure.runtime.configure_threads`)."""
    from freqpure.runtime import configure_threads

    configure_threads(getattr(args, "threads", None))
