"""Stand-ins for published checkpoints: the published architecture with random weights, for dry runs.

A GPU user's first run of a ``*-published.yaml`` config should not fail on a key, a shape or a
transform after a multi-GB download. :func:`write_standin` writes ``<directory>/<name>.safetensors``,
the file the registry looks for first for a published name, holding that model's architecture with
random weights (``small=True``: a narrower, shallower configuration of the same family, e.g. an ADM
U-Net at 256x256 with 32 base channels). Point the registry at that folder and every command runs
unchanged, through the same loading path, wrapper, ε settings (image size, learned σ) and classifier
preprocessing (resize to 224, ImageNet normalisation) as with the real checkpoint::

    from freqpure.models.standins import write_standin
    write_standin("guided-diffusion-imagenet256-uncond", "/tmp/standins")
    write_standin("torchvision-resnet50", "/tmp/standins")
    # FREQPURE_CHECKPOINTS=/tmp/standins freqpure evaluate --config configs/imagenet-... --set data.n=2 ...

Accuracies from stand-ins are meaningless. A stand-in file says so in its metadata
(``freqpure_standin``) and the registry warns whenever it loads one; :func:`write_standin` never
overwrites an existing file (a real converted checkpoint keeps its place).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from freqpure.errors import OutputExistsError, UsageError
from freqpure.models._archs import ARCHS
from freqpure.models._specs import PUBLISHED

__all__ = ["SMALL_CONFIGS", "STANDIN_KEY", "write_standin"]

STANDIN_KEY = "freqpure_standin"

# Reduced configurations of the published families: same input/output shapes and wrappers, far fewer
# weights. torchvision's ResNet-50 has no size knobs and stays full size (25.6M parameters).
SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    "diffpure-cifar10-ncsnpp": {"nf": 16, "num_res_blocks": 1},
    "guided-diffusion-imagenet256-uncond": {"model_channels": 32, "num_res_blocks": 1, "num_head_channels": 32},
    "robustbench-cifar10-standard": {"depth": 10, "widen_factor": 1},
    "freqpure-cifar10-wrn70-16": {"depth": 10, "width": 1},
}


def write_standin(name: str, directory: str | os.PathLike[str], *, small: bool = True, seed: int = 0,
                  config: Mapping[str, Any] | None = None) -> Path:
    """Write ``<directory>/<name>.safetensors``: published model ``name``'s architecture with random weights.

    ``small``: use :data:`SMALL_CONFIGS` (else the published configuration); ``config``: further
    constructor kwargs over that. ``seed`` fixes the weights. Returns the path; refuses to overwrite.
    """
    from freqpure.models.checkpoint import write_safetensors

    if name not in PUBLISHED:
        raise UsageError(f"stand-ins exist for published models only ({', '.join(PUBLISHED)}); got {name!r}")
    spec = PUBLISHED[name]
    cfg = {**spec.config, **(SMALL_CONFIGS.get(name, {}) if small else {}), **dict(config or {})}
    path = Path(directory).expanduser() / f"{name}.safetensors"
    if path.exists():
        raise OutputExistsError(f"{path} exists; a stand-in never replaces a checkpoint file")
    arch = ARCHS[spec.arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = arch.build(cfg)
    metadata = {
        "freqpure_format": "1",
        "freqpure_kind": arch.kind,
        "freqpure_arch": spec.arch,
        "freqpure_config": json.dumps(cfg, sort_keys=True),
        "freqpure_name": name,
        STANDIN_KEY: f"random weights (seed {seed}){', reduced configuration' if small else ''}; "
                     "for dry runs only, accuracies are meaningless",
    }
    if arch.kind == "diffusion":
        metadata["freqpure_eps"] = json.dumps(arch.eps_kwargs(cfg), sort_keys=True)
    else:
        metadata["freqpure_preprocess"] = json.dumps(dict(arch.preprocess), sort_keys=True)
    return write_safetensors(path, net.state_dict(), metadata)
