"""Optional: diffusers ``UNet2DModel`` directories as ε-models (needs ``pip install diffusers``).

The directory holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or ``.bin``). The
config is read by diffusers; the weights are read by freqpure's safe loader (safetensors or
``torch.load(weights_only=True)``) and loaded strictly. Timesteps are the integer DDPM step
indices 0..999 (time_scale 1); 2×channels outputs are treated as learned sigma.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor, nn

from freqpure.errors import DependencyError, NotFoundError
from freqpure.models.adapters import EpsModel
from freqpure.models.checkpoint import CheckpointError, find_state_dict, load_weights, read_checkpoint

__all__ = ["DiffusersUNet", "MissingDependencyError", "load_diffusers_unet"]

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class MissingDependencyError(DependencyError):
    """An optional dependency is not installed."""


class DiffusersUNet(nn.Module):
    """``UNet2DModel`` called as ``net(x [B,C,H,W], t [B]) -> [B, C_out, H, W]``."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.unet(x, t).sample


def load_diffusers_unet(path: str | os.PathLike[str]) -> EpsModel:
    """Load a diffusers ``UNet2DModel`` directory (or its ``unet/`` subfolder) as an :class:`EpsModel`."""
    try:
        from diffusers import UNet2DModel
    except ImportError as err:
        raise MissingDependencyError(
            f"{path} looks like a diffusers model directory, which needs the optional dependency "
            "'diffusers': pip install diffusers"
        ) from err
    root = Path(path)
    if not (root / "config.json").is_file() and (root / "unet" / "config.json").is_file():
        root = root / "unet"
    if not (root / "config.json").is_file():
        raise NotFoundError(f"{root}: no config.json (not a diffusers UNet2DModel directory)")
    config = UNet2DModel.load_config(root)
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise CheckpointError(f"{root}: a {config['_class_name']}, only UNet2DModel is supported")
    weights = next((root / f for f in _WEIGHT_FILES if (root / f).is_file()), None)
    if weights is None:
        raise NotFoundError(f"{root}: none of {', '.join(_WEIGHT_FILES)} found")
    unet = load_weights(UNet2DModel.from_config(config), find_state_dict(read_checkpoint(weights)),
                        what=str(root))
    in_ch, out_ch = int(config.get("in_channels", 3)), int(config.get("out_channels", 3))
    size = config.get("sample_size")
    return EpsModel(DiffusersUNet(unet), image_size=size if isinstance(size, int) else None,
                    channels=in_ch, learn_sigma=out_ch == 2 * in_ch, name=root.name)
