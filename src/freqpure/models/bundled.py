"""The small CIFAR-10 models shipped inside the package (``freqpure/weights/*.safetensors``).

Each weights file carries its own construction recipe in the safetensors metadata:

* ``freqpure_kind``: ``"diffusion"`` or ``"classifier"``;
* ``freqpure_arch``: a key of :data:`ARCHITECTURES`;
* ``freqpure_config``: JSON of the constructor keyword arguments;
* optional ``freqpure_*`` extras (training step, measured accuracy, ...).

The model registry imports this module lazily and reads :data:`ARCHITECTURES` and :data:`BUNDLED`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from freqpure.errors import CheckpointError, NotFoundError, UnknownNameError, UsageError
from freqpure.models.adapters import EpsModel
from freqpure.models.checkpoint import check_finite, count_elements
from freqpure.models.small import FastResNet, SmallUNet

__all__ = [
    "ARCHITECTURES",
    "BUNDLED",
    "WEIGHTS_DIR",
    "weights_path",
    "read_metadata",
    "build_from_file",
    "load_bundled_diffusion",
    "load_bundled_classifier",
    "file_t_max",
]

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "small-unet": SmallUNet,
    "fast-resnet": FastResNet,
}

BUNDLED: dict[str, dict[str, Any]] = {
    "cifar10-ddpm-small": {
        "kind": "diffusion",
        "file": "cifar10-ddpm-small.safetensors",
        "arch": "small-unet",
        "dataset": "cifar10",
        "image_size": 32,
        "input_range": "[-1, 1]",
        "schedule": "linear-beta 1e-4..2e-2, 1000 steps",
        "t_max": 1000,
        "description": "Small ε-prediction DDPM UNet (2.3M params) trained on CPU on CIFAR-10, all steps "
        "0..999; EMA weights. Forward of 64 images at 32x32 takes about 0.2 s on 2 CPU threads. "
        "See docs/models.md.",
    },
    "cifar10-ddpm-pure": {
        "kind": "diffusion",
        "file": "cifar10-ddpm-pure.safetensors",
        "arch": "small-unet",
        "dataset": "cifar10",
        "image_size": 32,
        "input_range": "[-1, 1]",
        "schedule": "linear-beta 1e-4..2e-2, 1000 steps",
        "t_max": 200,
        "description": "Purification-range ε-model: cifar10-ddpm-small fine-tuned on steps 0..199 only "
        "(t_max = 200; purifiers refuse t* > 200). Same 2.3M-parameter UNet; EMA weights. See docs/models.md.",
    },
    "cifar10-resnet-small": {
        "kind": "classifier",
        "file": "cifar10-resnet-small.safetensors",
        "arch": "fast-resnet",
        "dataset": "cifar10",
        "image_size": 32,
        "num_classes": 10,
        "input_range": "[0, 1]",
        "description": "Fast ResNet-9-style CIFAR-10 classifier (normalisation inside), trained on CPU. "
        "See docs/models.md for its test accuracy.",
    },
    "cifar10-resnet-small-pa": {
        "kind": "classifier",
        "file": "cifar10-resnet-small-pa.safetensors",
        "arch": "fast-resnet",
        "dataset": "cifar10",
        "image_size": 32,
        "num_classes": 10,
        "input_range": "[0, 1]",
        "description": "Purifier-aware cifar10-resnet-small: fine-tuned on train images half of which were "
        "DiffPure-purified by cifar10-ddpm-small (t* = 100). Keeps more accuracy after purification; "
        "see docs/models.md.",
    },
}


def _entry(name: str, kind: str) -> dict[str, Any]:
    if name not in BUNDLED:
        known = ", ".join(sorted(BUNDLED))
        raise UnknownNameError(f"unknown bundled model {name!r}; known bundled models: {known}")
    entry = BUNDLED[name]
    if entry["kind"] != kind:
        raise UsageError(f"bundled model {name!r} is a {entry['kind']} model, not a {kind} model")
    return entry


def weights_path(name: str) -> Path:
    """Path of a bundled model's weights file (which may not exist yet)."""
    if name not in BUNDLED:
        raise UnknownNameError(f"unknown bundled model {name!r}; known bundled models: {', '.join(sorted(BUNDLED))}")
    return WEIGHTS_DIR / BUNDLED[name]["file"]


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of a weights file."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise UsageError(f"{path}: not a readable safetensors file ({err})") from None


def build_from_file(
    path: str | Path, kind: str | None = None, arch: str | None = None, device: torch.device | str | None = None
) -> tuple[nn.Module, dict[str, str]]:
    """Construct the network described by a weights file's metadata and load its weights (float32, eval).

    ``kind``/``arch`` (optional) must match the metadata, else ``ValueError``.
    """
    path = Path(path)
    meta = read_metadata(path)
    for key in ("freqpure_kind", "freqpure_arch", "freqpure_config"):
        if key not in meta:
            raise UsageError(f"{path}: metadata lacks {key!r}; not a freqpure weights file")
    if kind is not None and meta["freqpure_kind"] != kind:
        raise UsageError(f"{path}: holds a {meta['freqpure_kind']} model, expected {kind}")
    if arch is not None and meta["freqpure_arch"] != arch:
        raise UsageError(f"{path}: holds architecture {meta['freqpure_arch']!r}, expected {arch!r}")
    if meta["freqpure_arch"] not in ARCHITECTURES:
        raise UsageError(f"{path}: unknown architecture {meta['freqpure_arch']!r}; known: {sorted(ARCHITECTURES)}")
    arch_name = meta["freqpure_arch"]
    try:
        kwargs = json.loads(meta["freqpure_config"])
        if not isinstance(kwargs, dict):
            raise TypeError(f"expected a JSON object, got {type(kwargs).__name__}")
        with torch.device("meta"):  # shapes only: refuse a config asking for more than the file holds
            wanted = count_elements(ARCHITECTURES[arch_name](**kwargs))
    except (json.JSONDecodeError, TypeError, ValueError, KeyError, AssertionError) as err:
        raise CheckpointError(f"{path}: cannot build {arch_name} from its metadata config "
                              f"({type(err).__name__}: {err})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    have = sum(v.numel() for v in state.values())
    if wanted > have + 1_000_000:
        raise CheckpointError(f"{path}: its config asks for a {arch_name} network of {wanted:,} values "
                              f"({wanted * 4 / 1e9:.2f} GB) but the file holds only {have:,}")
    check_finite(state, what=str(path))
    net = ARCHITECTURES[arch_name](**kwargs)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UsageError(f"{path}: weights do not match {meta['freqpure_arch']}({kwargs}): {err}") from None
    net = net.float().eval()
    if device is not None:
        net = net.to(device)
    return net, meta


def load_bundled_diffusion(name: str = "cifar10-ddpm-small", device: torch.device | str | None = None) -> EpsModel:
    """A bundled diffusion model as an :class:`EpsModel` (x in [-1,1], t step indices 0..999; eval, fp32).

    ``model.t_max`` is the range it was trained on (steps ``0..t_max-1``), read from the file.
    """
    entry = _entry(name, "diffusion")
    path = weights_path(name)
    if not path.is_file():
        raise NotFoundError(
            f"weights of {name!r} not found at {path}; train and export them with "
            f"`freqpure train diffusion` / `freqpure train export work/train/{name} {path}` (see docs/models.md)"
        )
    net, meta = build_from_file(path, kind="diffusion", arch=entry["arch"], device=device)
    t_max = file_t_max(meta)
    if t_max != entry.get("t_max", 1000):
        raise UsageError(f"{path}: trained on steps 0..{t_max - 1} (freqpure_t_max = {t_max}), but the registry "
                         f"entry {name!r} declares t_max = {entry.get('t_max', 1000)}; wrong weights file?")
    return EpsModel(net, image_size=entry["image_size"], channels=3, name=name, t_max=t_max).eval()


def file_t_max(meta: dict[str, str]) -> int:
    """The step range (``t_max``) a weights file was trained on: ``freqpure_t_max`` metadata, else 1000."""
    raw = meta.get("freqpure_t_max", "1000")
    try:
        return int(json.loads(raw))
    except (ValueError, TypeError):
        raise UsageError(f"freqpure_t_max metadata must be an integer, got {raw!r}") from None


def load_bundled_classifier(name: str = "cifar10-resnet-small", device: torch.device | str | None = None) -> nn.Module:
    """A bundled classifier: ``model(x [B,3,32,32] in [0,1]) -> logits [B,10]`` (eval, fp32)."""
    entry = _entry(name, "classifier")
    path = weights_path(name)
    if not path.is_file():
        raise NotFoundError(
            f"weights of {name!r} not found at {path}; train them with `freqpure train classifier "
            f"--config configs/train_classifier_small.yaml --export-to {path}` (see docs/models.md)"
        )
    net, _ = build_from_file(path, kind="classifier", arch=entry["arch"], device=device)
    return net
