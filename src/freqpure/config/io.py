"""Configuration files, generically: any (nested) dataclass to and from plain dicts and strict YAML.

:func:`from_dict` builds a dataclass from a mapping (unknown keys refused, naming the valid ones; old keys read
through the class's ``ALIASES``, see :func:`nested_alias`), :func:`to_dict`/:func:`dump_yaml` write it back (the
saved form run-folder fingerprints are taken of), :func:`apply_overrides` applies ``--set key.sub=value``,
:func:`parse_yaml` reads YAML strictly, :func:`config_diff` says what differs and :func:`load_settings` is the one
loader of every command's ``--config``/``--set``/flags. Nothing here knows a purifier: the purifier's settings are
:mod:`freqpure.config.purifier`; :mod:`freqpure.config` re-exports both.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from freqpure.errors import NotFoundError, UsageError

__all__ = [
    "from_dict",
    "to_dict",
    "coerce_fields",
    "apply_overrides",
    "load_yaml",
    "read_config_text",
    "dump_yaml",
    "config_diff",
    "parse_yaml",
    "Alias",
    "nested_alias",
    "upgrade_keys",
    "rename_keys",
    "with_keys",
    "load_settings",
]

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if is_dataclass(annotation):
        if not isinstance(value, dict):
            raise UsageError(f"{where} must be a mapping, got {value!r}")
        return from_dict(annotation, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except (TypeError, ValueError):
                continue
        raise UsageError(f"{where}: cannot interpret {value!r} as {annotation}")
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(annotation) or (Any,)
        if not isinstance(value, list | tuple):
            raise UsageError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UsageError(f"{where} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
            raise UsageError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 4e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UsageError(f"{where} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str | int | float):
            raise UsageError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


# An old (flat) key of a settings dataclass, still read: ``alias(value, data)`` gives the same setting in the
# current form, a partial dict (``data``: the whole mapping being read, for aliases that need another key).
Alias = Callable[[Any, dict[str, Any]], dict[str, Any]]


def nested_alias(*paths: str) -> Alias:
    """An old key now spelled at each dotted path of ``paths`` (e.g. ``nested_alias("purifier.rounds")``)."""
    def alias(value: Any, data: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for path in paths:
            *parents, leaf = path.split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return out

    return alias


def _aliases(cls: type) -> dict[str, Alias]:
    """The old keys ``cls`` still reads (its ``ALIASES`` class attribute; none by default)."""
    return dict(getattr(cls, "ALIASES", None) or {})


def _merge(into: dict[str, Any], new: dict[str, Any], *, old_key: str | None = None, prefix: str = "") -> None:
    """Deep-merge ``new`` into ``into``; with ``old_key``, a leaf already given with another value is refused."""
    for key, value in new.items():
        here = into.get(key)
        if isinstance(value, dict) and isinstance(here, dict):
            _merge(here, value, old_key=old_key, prefix=f"{prefix}{key}.")
            continue
        if old_key is not None and key in into and here != value:
            raise UsageError(f"{old_key} is the old spelling of {prefix}{key}; they disagree ({value!r} vs "
                             f"{here!r}): give {prefix}{key} only")
        into[key] = value


def upgrade_keys(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the old keys of ``cls`` (:func:`nested_alias` and the like) rewritten to the current form."""
    return rename_keys(_aliases(cls), data)


def rename_keys(aliases: dict[str, Alias], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the old keys ``aliases`` names rewritten to the current form (a recorded settings dict read
    at the edge, e.g. a demo's results.json; :func:`upgrade_keys` for a settings class)."""
    if not any(key in aliases for key in data):
        return data
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items() if k not in aliases}
    for key, value in data.items():
        if key in aliases:
            _merge(out, aliases[key](value, data), old_key=key)
    return out


def with_keys(cls: type, data: dict[str, Any], keys: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a dict of ``cls``) with ``keys`` set on top, old spellings among them mapped (later wins)."""
    aliases = _aliases(cls)
    out = copy.deepcopy(data)
    for key, value in keys.items():
        _merge(out, aliases[key](value, out) if key in aliases else {key: value})
    return out


def coerce_fields(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data``'s values coerced to the field types of dataclass ``cls`` (keys must be fields of ``cls``)."""
    types_ = _field_types(cls)
    try:
        return {k: _coerce(v, types_[k], f"{where}.{k}") for k, v in data.items()}
    except TypeError as err:
        raise UsageError(f"{where}: {err}") from None


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise, naming them and listing the valid ones.

    Old keys listed in ``cls.ALIASES`` are read in their current form (see :func:`upgrade_keys`). A section whose
    field default is not its class's defaults (``DemoSettings.purifier``: preset ``bundled-table``) is read on top
    of that default, as ``--set`` reads it (old flat keys change only what they name).
    """
    tagged = getattr(cls, "from_config", None)
    if tagged is not None:  # a tagged union (an attack's settings): the variant its data names reads it
        return tagged(data, where)
    data = upgrade_keys(cls, dict(data or {}))
    for f in fields(cls):
        if isinstance(data.get(f.name), dict) and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if is_dataclass(default) and default != type(default)():
                data[f.name] = {**dataclasses.asdict(default), **data[f.name]}
    types_ = _field_types(cls)
    valid = [f.name for f in fields(cls)]
    unknown = [k for k in data if k not in valid]
    if unknown:
        hints = {k: difflib.get_close_matches(k, valid, n=1) for k in unknown}
        hint = "; ".join(f"{where}.{k}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
        raise UsageError(f"unknown config key(s): {hint}. Valid keys of {where}: {', '.join(valid)}")
    try:
        kwargs = {k: _coerce(v, types_[k], f"{where}.{k}") for k, v in data.items()}
    except TypeError as err:
        raise UsageError(f"{where}: {err}") from None
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass → plain nested dict (YAML/JSON-ready). A field with ``metadata={"omit_none": True}`` is left
    out while it is ``None`` (a key added later keeps older configs' dicts, and fingerprints, unchanged)."""
    out = dataclasses.asdict(cfg)
    _drop_unset(cfg, out)
    return out


def _drop_unset(cfg: Any, out: dict[str, Any]) -> None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("omit_none") and value is None:
            out.pop(f.name, None)
        elif dataclasses.is_dataclass(value) and isinstance(out.get(f.name), dict):
            _drop_unset(value, out[f.name])
        elif isinstance(value, list) and isinstance(out.get(f.name), list):
            out[f.name] = _saved_items(value, out[f.name])


def _saved_items(values: list[Any], out: list[Any]) -> list[Any]:
    """A list's items in their saved form: an item's own ``saved_dict()`` when it has one (an attack's settings
    keep their flat saved layout, see :mod:`freqpure.attacks.settings`), else as ``asdict`` wrote it."""
    return [v.saved_dict() if hasattr(v, "saved_dict") else d for v, d in zip(values, out)]


def _saved_lists(cfg: Any, out: dict[str, Any]) -> dict[str, Any]:
    """``out`` (``asdict(cfg)``, every key kept) with list items in their saved form (see :func:`_saved_items`)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and isinstance(out.get(f.name), dict):
            _saved_lists(value, out[f.name])
        elif isinstance(value, list) and isinstance(out.get(f.name), list):
            out[f.name] = _saved_items(value, out[f.name])
    return out


def apply_overrides(cfg: T, overrides: list[str] | None) -> T:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) and re-validate; returns a new config.

    Lists of sections are indexed by position: ``attacks.0.eps=0.01``.
    """
    data = _saved_lists(cfg, dataclasses.asdict(cfg))  # every key, the omitted-while-None ones too
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"override {item!r} must look like key.sub=value")
        node: Any = data
        parts = key.strip().split(".")
        if len(parts) == 1 and parts[0] not in data and parts[0] in _aliases(type(cfg)):  # an old flat key
            data = with_keys(type(cfg), data, {parts[0]: parse_yaml(raw, f"override {item!r}")})
            continue
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):  # list of sections: index it, e.g. attacks.0.eps=...
                if not (part.isdigit() and int(part) < len(node)):
                    prefix = ".".join(parts[:i])
                    raise UsageError(f"{prefix} has {len(node)} entries; {part!r} in override {item!r} is not an index")
                node = node[int(part)]
                continue
            if not isinstance(node.get(part), dict | list):
                prefix = ".".join(parts[: i + 1])
                raise UsageError(f"unknown config section {prefix!r} in override {item!r}; valid: {', '.join(node)}")
            node = node[part]
        if isinstance(node, list) or parts[-1] not in node:
            where = ".".join(parts[:-1]) or "config"
            valid = ", ".join(node) if isinstance(node, dict) else "an index and a key, e.g. 0.eps"
            raise UsageError(f"unknown config key {key!r} in override {item!r}; valid keys of {where}: {valid}")
        value = parse_yaml(raw, f"override {item!r}")
        node[parts[-1]] = value
    return from_dict(type(cfg), data)


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys, reads ``1e9`` as a number (YAML 1.2) and keeps
    ``100:20`` as text (YAML 1.1 would read it as the base-60 number 6020)."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # PyYAML reports unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1}, again on line "
                    f"{key_node.start_mark.line + 1}); give each key once", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# Resolvers are looked up per first character: rebuild them without the base-60 int/float patterns and with a
# float pattern that also accepts 1e9 / 1E-3 (no dot needed, as in YAML 1.2).
_StrictLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0o?[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, where: str = "YAML") -> Any:
    """Parse YAML strictly (see :class:`_StrictLoader`); errors name ``where``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:  # one line: the problem and where it is
        mark = err.problem_mark or err.context_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = " ".join(filter(None, [err.context, err.problem])) or type(err).__name__
        raise UsageError(f"{where} is not valid YAML: {problem}{at}") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{where} is not valid YAML: {' '.join(str(err).split())}") from None


def read_config_text(path: str | Path, what: str = "config file") -> str:
    """The text of a YAML config file; a folder, a missing file or bytes that are not UTF-8 are refused."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder; give a YAML file")
    if not path.is_file():
        raise NotFoundError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte {err.start} cannot be decoded); give a YAML "
                         "file") from None


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Load a YAML file strictly into dataclass ``cls``."""
    data = parse_yaml(read_config_text(path, "config file"), f"config file {Path(path)}") or {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping at the top level")
    return from_dict(cls, data)


def load_settings(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                  flags: dict[str, Any] | None = None, *, start: T | None = None, where: str = "config") -> T:
    """Settings of type ``cls``: defaults (or ``start``) ← the YAML file ``path`` ← ``key=value`` ``overrides``
    ← ``flags``.

    The one loader of every command's ``--config``/``--set``/flags. ``flags`` (``None`` values: not given) are
    applied last; a key given both by an override and by a flag is an error (no silent precedence). ``where``
    names the settings in the errors about flags.
    """
    cfg = load_yaml(cls, path) if path else (start if start is not None else cls())
    overrides = list(overrides or [])
    cfg = apply_overrides(cfg, overrides)
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    if flags:
        set_keys = {item.partition("=")[0].strip() for item in overrides}
        clash = sorted(set_keys & set(flags))
        if clash:
            raise UsageError(f"{', '.join(clash)} given both by --set and by its own flag; give it once")
        cfg = from_dict(cls, with_keys(cls, to_dict(cfg), flags), where)
    return cfg


def dump_yaml(cfg: Any) -> str:
    """Config → YAML text (keys in field order)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Lines ``key: old -> new`` for every differing leaf of two nested dicts."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            lines += config_diff(a, b, name + ".")
        elif a != b:
            lines.append(f"{name}: {a!r} -> {b!r}")
    return lines
