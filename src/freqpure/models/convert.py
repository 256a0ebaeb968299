"""Converting a published checkpoint into a pickle-free ``.safetensors`` file with freqpure metadata
(``freqpure convert``); the file is then loaded by name or path through :mod:`freqpure.models.registry`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from freqpure._fileio import check_writable_output
from freqpure.errors import OutputExistsError, UsageError
from freqpure.models._archs import ARCHS
from freqpure.models._specs import PUBLISHED, ModelSpec
from freqpure.models.checkpoint import read_checkpoint, sha256_of, write_safetensors
from freqpure.models.registry import FORMAT_VERSION, extract_state_dict, guess_spec, spec_for_file, verify_checksum

__all__ = ["convert_checkpoint"]


def _default_config(arch_name: str) -> dict[str, Any]:
    for spec in PUBLISHED.values():
        if spec.arch == arch_name:
            return dict(spec.config)
    return {}


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None = None,
    *,
    arch: str | None = None,
    config: Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
    overwrite: bool = False,
) -> tuple[Path, dict[str, str]]:
    """Convert a published checkpoint into a pickle-free ``.safetensors`` file with freqpure metadata.

    ``arch``: a registry name (``diffpure-cifar10-ncsnpp``) or an architecture (``ncsnpp``, ``adm``,
    ``wrn``, ``resnet50``, ``dm_wrn``); default: detected from the file name or its keys. ``config``:
    constructor kwargs overriding the published configuration. ``trust_pickle``: allow full
    unpickling (runs code from the file — only for files from a trusted source). NCSN++ score_sde
    checkpoints are converted with their EMA weights. Returns the output path and its metadata.
    """
    src = Path(src).expanduser()
    if dst is not None and Path(dst).expanduser().exists() and not overwrite:
        raise OutputExistsError(f"{dst} exists (pass --force to overwrite)")
    if dst is not None:
        check_writable_output(dst, "--to")  # before the (long) work, not after it
    obj = read_checkpoint(src, trust_pickle=trust_pickle)
    if arch in PUBLISHED:
        spec: ModelSpec | None = PUBLISHED[arch]
    elif arch is None:
        spec = spec_for_file(src) if config is None else None
        spec = spec or (guess_spec(obj, None, src) if config is None else None)
        if spec is None:
            raise UsageError("--config needs --arch (which architecture the config is for)")
    elif arch in ARCHS:
        spec = None
    else:
        raise UsageError(
            f"unknown --arch {arch!r}; use a model name ({', '.join(PUBLISHED)}) "
            f"or an architecture ({', '.join(ARCHS)})"
        )
    arch_name = spec.arch if spec else str(arch)
    cfg = dict(config) if config is not None else (dict(spec.config) if spec else _default_config(arch_name))
    name = spec.name if spec and config is None else arch_name
    source_sha256 = sha256_of(src)
    if spec is not None:
        verify_checksum(spec, src, source_sha256)
    sd = extract_state_dict(arch_name, cfg, obj, f"{name} ({src})")
    info = ARCHS[arch_name]
    metadata = {
        "freqpure_format": FORMAT_VERSION,
        "freqpure_kind": info.kind,
        "freqpure_arch": arch_name,
        "freqpure_config": json.dumps(cfg, sort_keys=True),
        "freqpure_name": name,
        "freqpure_source": src.name,
        "freqpure_source_sha256": source_sha256,
    }
    if info.kind == "diffusion":
        metadata["freqpure_eps"] = json.dumps(info.eps_kwargs(cfg), sort_keys=True)
    else:
        metadata["freqpure_preprocess"] = json.dumps(dict(info.preprocess), sort_keys=True)
    if dst is None:
        dst = src.parent / (f"{spec.name}.safetensors" if spec and config is None else f"{src.stem}.safetensors")
    dst = Path(dst).expanduser()
    if dst.exists() and not overwrite:
        raise OutputExistsError(f"{dst} exists (pass --force to overwrite)")
    if dst.resolve() == src.resolve():
        raise UsageError("the output would overwrite the input checkpoint")
    check_writable_output(dst, "--to")
    return write_safetensors(dst, sd, metadata), metadata
