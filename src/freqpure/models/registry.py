"""Model registry: published names, bundled small models and checkpoint paths → ready-to-use modules.

* :func:`load_diffusion` → :class:`~freqpure.models.adapters.EpsModel`
  (``eps_model(x_t [B,C,H,W] in [-1,1], t [B] step indices 0..999) -> [B,C|2C,H,W]``).
* :func:`load_classifier` → ``nn.Module`` taking images ``[B,3,H,W]`` in [0, 1], returning logits.

Both return the model in eval mode with parameters frozen (``requires_grad=False``; gradients
still flow to the *input*; call ``.requires_grad_(True)`` to fine-tune). Published files are
looked up in ``checkpoint_dir``, else ``$FREQPURE_CHECKPOINTS``, else ``~/.cache/freqpure/checkpoints``;
a converted ``<name>.safetensors`` there is preferred over the original pickle. Files are read with
``torch.load(weights_only=True)`` or safetensors only (see :mod:`freqpure.models.checkpoint`).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from freqpure.errors import NotFoundError, UsageError
from freqpure.models._archs import ARCHS, wrap_classifier, wrap_diffusion
from freqpure.models._specs import PUBLISHED, ModelSpec
from freqpure.models.adapters import EpsModel
from freqpure.models.checkpoint import (
    ArchitectureMismatchError,
    CheckpointError,
    CorruptCheckpointError,
    SafetensorsFile,
    count_elements,
    load_weights,
    normalize_state_dict,
    read_checkpoint,
    sha256_of,
)

__all__ = [
    "ARCHS",
    "FORMAT_VERSION",
    "PUBLISHED",
    "UnknownModelError",
    "build_network",
    "extract_state_dict",
    "guess_spec",
    "spec_for_file",
    "verify_checksum",
    "checkpoint_dir",
    "list_models",
    "load_classifier",
    "load_diffusion",
    "model_info",
]

ENV_VAR = "FREQPURE_CHECKPOINTS"
FORMAT_VERSION = "1"
DeviceLike = str | torch.device | None


class UnknownModelError(UsageError):
    """A model name that is neither published, bundled, nor an existing path."""


# ------------------------------------------------------------------------------------------ lookup


def _bundled() -> ModuleType | None:
    """``freqpure.models.bundled`` if it exists (imported lazily, on first lookup)."""
    try:
        return importlib.import_module("freqpure.models.bundled")
    except ModuleNotFoundError as err:
        if err.name in ("freqpure.models.bundled",):
            return None
        raise


def _bundled_entries() -> dict[str, dict[str, Any]]:
    module = _bundled()
    return dict(getattr(module, "BUNDLED", {})) if module is not None else {}


def checkpoint_dir(directory: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """The directory searched for published files, and where that choice came from."""
    if directory is not None:
        return Path(directory).expanduser(), "checkpoint_dir argument"
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "freqpure" / "checkpoints", f"default (set ${ENV_VAR} or pass checkpoint_dir)"


def list_models(kind: str | None = None) -> list[str]:
    """Known model names (bundled first, then published), optionally only ``'diffusion'``/``'classifier'``."""
    bundled = [n for n, e in _bundled_entries().items() if kind is None or e.get("kind") == kind]
    published = [n for n, s in PUBLISHED.items() if kind is None or s.kind == kind]
    return bundled + [n for n in published if n not in bundled]


def model_info(name: str) -> dict[str, Any]:
    """Registry entry of a name: file(s), architecture, preprocessing, accuracy, source, checksums."""
    if name in PUBLISHED:
        return PUBLISHED[name].as_dict()
    entries = _bundled_entries()
    if name in entries:
        return {"name": name, "bundled": True, **entries[name]}
    raise _unknown(name)


def _unknown(name: str) -> UnknownModelError:
    known = list_models()
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
    ordered = close + [n for n in known if n not in close]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UnknownModelError(
        f"unknown model {name!r}.{hint} Known models: {', '.join(ordered)}. "
        "Or pass the path of a checkpoint file (.safetensors, .pt, .pth)."
    )


def _find_file(spec: ModelSpec, directory: str | os.PathLike[str] | None) -> Path:
    root, origin = checkpoint_dir(directory)
    candidates = [f"{spec.name}.safetensors", *spec.files]
    for rel in candidates:
        if (root / rel).is_file():
            return root / rel
    where = "; ".join([spec.source, *spec.urls])
    raise NotFoundError(
        f"model {spec.name!r} needs the file {spec.files[0]!r} (also accepted: "
        f"{', '.join(repr(c) for c in candidates if c != spec.files[0])}), not found in {root} "
        f"[{origin}]. Obtain it from: {where}. See docs/checkpoints.md."
    )


def verify_checksum(spec: ModelSpec, path: Path, digest: str | None = None) -> None:
    """Compare a published file with its known SHA-256 (or torch.hub-style prefix), when there is one."""
    full, prefix = spec.sha256.get(path.name), spec.sha256_prefix.get(path.name)
    if not (full or prefix):
        return
    digest = digest or sha256_of(path)
    if (full and digest != full) or (prefix and not digest.startswith(prefix)):
        raise CheckpointError(
            f"{path}: SHA-256 {digest[:16]}… does not match the published file "
            f"({full or prefix + '…'}); the download is corrupt or it is a different file"
        )


def spec_for_file(path: Path) -> ModelSpec | None:
    for spec in PUBLISHED.values():
        if path.name in {Path(f).name for f in spec.files} or path.name == f"{spec.name}.safetensors":
            return spec
    return None


# ------------------------------------------------------------------------------------------ building


def _check_normalisation(config: Mapping[str, Any], what: str) -> None:
    """Refuse input normalisation that cannot be right: a non-finite ``mean``, a ``std`` that is not > 0
    (``std: [0, 0, 0]`` divides every image by zero and the classifier answers one class, silently)."""
    for key, positive in (("mean", False), ("std", True)):
        if key not in config:
            continue
        value = config[key]
        items = value if isinstance(value, list | tuple) else [value]
        ok = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                 and (v > 0 or not positive) for v in items)
        if not ok or not items:
            need = "finite numbers > 0" if positive else "finite numbers"
            raise CheckpointError(f"{what}: {key} must be {need} (one per channel), got {value!r}")


def build_network(arch_name: str, config: Mapping[str, Any], *, device: DeviceLike, meta: bool,
           what: str | None = None) -> nn.Module:
    """A randomly initialised network of architecture ``arch_name`` with ``config`` (or shapes only, on the meta
    device, with ``meta``): what a checkpoint is loaded into."""
    if arch_name in ARCHS:
        builder = ARCHS[arch_name].build
    else:
        module = _bundled()
        archs = getattr(module, "ARCHITECTURES", {}) if module is not None else {}
        if arch_name not in archs:
            known = sorted(ARCHS) + sorted(archs)
            raise UsageError(f"unknown architecture {arch_name!r}; known: {', '.join(known)}")
        bundled_builder = archs[arch_name]

        def builder(cfg: Mapping[str, Any]) -> nn.Module:
            return bundled_builder(**cfg)
    target = "meta" if meta else device
    if not isinstance(config, Mapping):
        raise CheckpointError(f"the config of architecture {arch_name!r} must be a mapping, got {config!r}")
    _check_normalisation(config, f"{what + ': ' if what else ''}architecture {arch_name!r}")
    try:
        with torch.device(target) if target is not None else contextlib.nullcontext():
            return builder(dict(config))
    except (TypeError, ValueError, KeyError, AssertionError, ZeroDivisionError, RuntimeError) as err:
        # RuntimeError: torch refusing a size from the config (``base: -1`` asks for a negative dimension)
        raise CheckpointError(f"{what + ': ' if what else ''}cannot build architecture {arch_name!r} from config "
                              f"{dict(config)}: "
                              f"{type(err).__name__}: {err}") from None


# A network may be at most this much larger than the file that is to fill it (BatchNorm counters and
# the like); anything bigger is refused before a byte is allocated.
_SIZE_SLACK = 1_000_000


def _check_size(arch_name: str, config: Mapping[str, Any], state_dict: Mapping[str, Tensor], what: str) -> None:
    """Refuse a config that asks for a network larger than the weights in the file (built on meta: no memory)."""
    wanted = count_elements(build_network(arch_name, config, device=None, meta=True, what=what))
    have = sum(t.numel() for t in state_dict.values())
    if wanted > have + _SIZE_SLACK:
        raise ArchitectureMismatchError(
            f"{what}: its config asks for a {arch_name} network of {wanted:,} values ({wanted * 4 / 1e9:.2f} GB in "
            f"float32) but the file holds only {have:,}; the metadata does not describe these weights"
        )


def _json_meta(metadata: Mapping[str, str], key: str, what: str, default: str | None = None) -> Any:
    """A JSON metadata entry of a weights file, with an error naming the file and the key."""
    text = metadata.get(key, default)
    try:
        return json.loads(text)
    except (TypeError, ValueError) as err:
        raise CorruptCheckpointError(f"{what}: metadata entry {key!r} is not valid JSON ({err}): {text!r:.120}") \
            from None


def _kind_of(arch_name: str, metadata: Mapping[str, str]) -> str:
    if arch_name in ARCHS:
        return ARCHS[arch_name].kind
    return metadata.get("freqpure_kind", "")


def _check_kind(found: str, wanted: str | None, what: str) -> None:
    if wanted and found and found != wanted:
        other = "load_classifier" if found == "classifier" else "load_diffusion"
        raise UsageError(f"{what} is a {found} model, not a {wanted} model; use freqpure.{other}()")


def _instantiate(
    arch_name: str,
    config: Mapping[str, Any],
    state_dict: Mapping[str, Tensor],
    *,
    name: str,
    device: DeviceLike,
    metadata: Mapping[str, str] | None = None,
    source: str | None = None,
) -> nn.Module:
    """Build ``arch_name(config)``, load ``state_dict`` strictly, wrap for freqpure's conventions.

    ``source`` (the file) names the weights in error messages (default: ``name``).
    """
    metadata = metadata or {}
    what = source or name
    meta = arch_name in ARCHS and ARCHS[arch_name].meta_init
    if not meta:
        _check_size(arch_name, config, state_dict, what)
    net = load_weights(build_network(arch_name, config, device=device, meta=meta, what=what), state_dict, what=what)
    if _kind_of(arch_name, metadata) == "diffusion":
        if "freqpure_eps" in metadata:
            eps = _json_meta(metadata, "freqpure_eps", what)
        elif arch_name in ARCHS:
            eps = ARCHS[arch_name].eps_kwargs(config)
        else:
            in_ch = config.get("in_channels", config.get("channels", 3))
            eps = {"image_size": config.get("image_size"), "channels": in_ch,
                   "learn_sigma": bool(config.get("learn_sigma", False))}
        if "freqpure_t_max" in metadata:  # the range it was trained on (freqpure's training export)
            from freqpure.models.bundled import file_t_max

            eps = {**eps, "t_max": file_t_max(dict(metadata))}
        return wrap_diffusion(net, eps, name)
    if "freqpure_preprocess" in metadata:
        preprocess = _json_meta(metadata, "freqpure_preprocess", what)
    else:
        preprocess = ARCHS[arch_name].preprocess if arch_name in ARCHS else {}
    return wrap_classifier(net, preprocess)


def extract_state_dict(spec_arch: str, config: Mapping[str, Any], obj: Any, what: str) -> dict[str, Tensor]:
    """Published file contents → normalised state_dict of ``spec_arch(config)`` (checked on meta)."""
    meta_model = build_network(spec_arch, config, device=None, meta=True)
    sd = ARCHS[spec_arch].extract(obj, meta_model, config)
    return normalize_state_dict(meta_model.state_dict(), sd, what=what)


def guess_spec(obj: Any, kind: str | None, path: Path) -> ModelSpec:
    """The published spec whose architecture matches the file's keys and shapes."""
    reports = []
    for spec in PUBLISHED.values():
        if kind and spec.kind != kind:
            continue
        try:
            extract_state_dict(spec.arch, spec.config, obj, spec.name)
            return spec
        except CheckpointError as err:
            lines = str(err).splitlines()
            reports.append(f"- {spec.name}: {lines[1] if len(lines) > 1 else lines[0]}")
    raise ArchitectureMismatchError(
        f"{path}: cannot tell which architecture this checkpoint is; it matches none of the published "
        f"{kind or ''} models:\n" + "\n".join(reports) + "\nIf it is a known architecture with another "
        f"configuration, convert it: freqpure convert {path} --arch ARCH --config JSON --to out.safetensors"
    )


def _load_path(path: Path, *, kind: str | None, spec: ModelSpec | None, device: DeviceLike) -> nn.Module:
    obj = read_checkpoint(path)
    metadata = obj.metadata if isinstance(obj, SafetensorsFile) else {}
    if "freqpure_standin" in metadata:  # see freqpure.models.standins
        warnings.warn(f"{path} is a stand-in, not the real model: {metadata['freqpure_standin']}", stacklevel=4)
    if "freqpure_arch" in metadata:
        arch_name = metadata["freqpure_arch"]
        _check_kind(metadata.get("freqpure_kind") or _kind_of(arch_name, metadata), kind, str(path))
        if spec is not None and arch_name != spec.arch:
            raise ArchitectureMismatchError(
                f"{path} holds a {arch_name!r} network, but model {spec.name!r} is a {spec.arch!r}"
            )
        config = _json_meta(metadata, "freqpure_config", str(path), "{}")
        name = metadata.get("freqpure_name") or path.stem
        return _instantiate(arch_name, config, obj.state_dict, name=name, device=device, metadata=metadata,
                            source=str(path))
    spec = spec or spec_for_file(path) or guess_spec(obj, kind, path)
    _check_kind(spec.kind, kind, f"{path} ({spec.name})")
    verify_checksum(spec, path)
    sd = extract_state_dict(spec.arch, spec.config, obj, f"{spec.name} ({path})")
    return _instantiate(spec.arch, spec.config, sd, name=spec.name, device=device)


def _finish(model: nn.Module, device: DeviceLike) -> nn.Module:
    if device is not None:
        model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def _load(name_or_path: str | os.PathLike[str], kind: str, device: DeviceLike,
          directory: str | os.PathLike[str] | None) -> nn.Module:
    if not isinstance(name_or_path, str | os.PathLike):
        raise UsageError(f"model must be a registered name or a path, got {type(name_or_path).__name__}")
    key = os.fspath(name_or_path)
    if not key.strip():
        raise UsageError(f"the {kind} model name is empty; give a registered name (freqpure models) or a path")
    if key in PUBLISHED:
        spec = PUBLISHED[key]
        _check_kind(spec.kind, kind, repr(key))
        return _finish(_load_path(_find_file(spec, directory), kind=kind, spec=spec, device=device), device)
    entries = _bundled_entries()
    if key in entries:
        _check_kind(entries[key].get("kind", ""), kind, repr(key))
        loader = getattr(_bundled(), f"load_bundled_{kind}")
        return _finish(loader(key, device=device), device)
    path = Path(key).expanduser()
    if path.is_dir():
        if kind != "diffusion" or not (path / "config.json").is_file():
            raise UsageError(f"{path} is a folder, not a checkpoint file; give a registered name (freqpure models), "
                             "a checkpoint file" + (", or a diffusers UNet2DModel folder (with config.json)"
                                                    if kind == "diffusion" else ""))
        from freqpure.models.diffusers_adapter import load_diffusers_unet

        return _finish(load_diffusers_unet(path), device)
    if path.is_file():
        return _finish(_load_path(path, kind=kind, spec=None, device=device), device)
    if os.sep in key or path.suffix in {".pt", ".pth", ".safetensors", ".bin", ".ckpt"}:
        raise NotFoundError(f"checkpoint not found: {path}")
    raise _unknown(key)


def load_diffusion(
    name_or_path: str | os.PathLike[str],
    *,
    device: DeviceLike = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> EpsModel:
    """A diffusion network as an ε-model: ``(x_t [B,C,H,W] in [-1,1], t [B] in 0..999) -> ε [B,C|2C,H,W]``.

    ``model.t_max``: the model was trained on step indices ``0..t_max-1`` (1000 for published models
    and files without ``freqpure_t_max`` metadata; 200 for ``cifar10-ddpm-pure``). Purifiers refuse
    plans that noise beyond it; ``repr(model)`` and ``model_info(name)["t_max"]`` state it.

    ``name_or_path``: a registry name (:func:`list_models`), a ``.safetensors`` file (freqpure
    metadata or a published architecture's keys), a published checkpoint file, or a diffusers
    ``UNet2DModel`` directory. ``device``: where to put it (default: torch's default device).
    """
    model = _load(name_or_path, "diffusion", device, checkpoint_dir)
    if not isinstance(model, EpsModel):
        raise CheckpointError(f"{name_or_path!r} did not load as an EpsModel (got {type(model).__name__})")
    return model


def load_classifier(
    name_or_path: str | os.PathLike[str],
    *,
    device: DeviceLike = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """A classifier taking images ``[B,3,H,W]`` in [0, 1] → logits ``[B, num_classes]`` (eval mode)."""
    return _load(name_or_path, "classifier", device, checkpoint_dir)
