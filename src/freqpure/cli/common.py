"""Helpers shared by the sub-commands: dataclass fields as flags, device and seed handling."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

import torch

__all__ = ["add_dataclass_flags", "dataclass_overrides", "resolve_device", "parse_optional_float"]


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
    """``auto`` → CUDA when available, else CPU; a CUDA request without a GPU is an error."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} requested but no CUDA device is available")
    return device
