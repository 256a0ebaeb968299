"""Configuration as dataclasses: one source of truth, loaded strictly from YAML, printed into results.

Two rooms, re-exported here (``from freqpure.config import ...`` keeps working for every name):

* :mod:`freqpure.config.io`: the generic machinery, for any nested dataclass — :func:`from_dict`, :func:`to_dict`,
  :func:`apply_overrides` (``--set``), strict YAML (:func:`parse_yaml`, :func:`load_yaml`, :func:`dump_yaml`),
  :func:`config_diff`, old keys (:func:`nested_alias`, :func:`upgrade_keys`, :func:`rename_keys`,
  :func:`with_keys`) and the one command-config loader :func:`load_settings`. It knows no purifier.
* :mod:`freqpure.config.purifier`: :class:`PurifierConfig` (the one description of a purifier),
  :func:`build_purifier`, :func:`preset`, :func:`with_resolved_precision` and :func:`spelled_before`.
"""

from __future__ import annotations

from freqpure.config.io import (
    Alias,
    apply_overrides,
    coerce_fields,
    config_diff,
    dump_yaml,
    from_dict,
    load_settings,
    load_yaml,
    nested_alias,
    parse_yaml,
    read_config_text,
    rename_keys,
    to_dict,
    upgrade_keys,
    with_keys,
)
from freqpure.config.purifier import (
    PurifierConfig,
    build_purifier,
    preset,
    spelled_before,
    with_resolved_precision,
)

__all__ = [
    "PurifierConfig",
    "build_purifier",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "load_yaml",
    "read_config_text",
    "dump_yaml",
    "config_diff",
    "parse_yaml",
    "with_resolved_precision",
    "Alias",
    "nested_alias",
    "upgrade_keys",
    "rename_keys",
    "with_keys",
    "load_settings",
    "spelled_before",
    "coerce_fields",
    "preset",
]
