"""OpenAI guided-diffusion U-Net (ADM), written so its published checkpoints load with ``strict=True``.

Key layout: ``time_embed``, ``input_blocks``, ``middle_block``, ``output_blocks``, ``out`` (plus
``label_emb`` when class-conditional). Conventions: GroupNorm with 32 groups, eps 1e-5, computed in
float32; attention splits heads *before* q/k/v (the "legacy" order) unless
``use_new_attention_order``; residual blocks modulate with scale/shift when
``use_scale_shift_norm``; resampling inside residual blocks when ``resblock_updown``.

Forward: ``net(x [B, C, H, W] in [-1, 1], timesteps [B] (int or float step indices), y=None)``
→ ``[B, out_channels, H, W]``; with learned sigma, channels ``0..C-1`` are ε and ``C..2C-1`` the
variance interpolation values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from freqpure.errors import UsageError

__all__ = ["ADMUNet", "adm_kwargs_from_config", "build_adm"]


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[cos, sin]`` of step indices ``[B]`` → ``[B, dim]`` float32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32 groups, eps 1e-5) evaluated in float32 whatever the input dtype."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Upsample(nn.Module):
    """Nearest ×2 upsampling, optionally followed by a 3×3 conv (``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """×2 downsampling: strided 3×3 conv or 2×2 average pooling (``op``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        self.op = (nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
                   if use_conv else nn.AvgPool2d(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding, optionally resampling by 2."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        *,
        use_scale_shift_norm: bool = False,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
            _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``x`` [B, C, H, W], ``emb`` [B, E] → [B, C_out, H', W']."""
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:
            h = self.h_upd(self.in_layers[:-1](x))
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels with a residual connection."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        *,
        use_new_attention_order: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise UsageError(f"{channels} channels are not divisible by {num_head_channels} per head")
            self.num_heads = channels // num_head_channels
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))
        self.new_order = use_new_attention_order
        self.use_checkpoint = use_checkpoint

    def forward(self, x: Tensor) -> Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))  # [B, 3C, T]
        heads, length = self.num_heads, x.shape[-1]
        if self.new_order:  # q, k, v first, then heads
            q, k, v = (z.reshape(b * heads, -1, length) for z in qkv.chunk(3, dim=1))
        else:  # legacy: heads first, then q, k, v
            q, k, v = qkv.reshape(b * heads, -1, length).chunk(3, dim=1)
        # [B·heads, T, ch] tokens; default SDPA scale 1/sqrt(ch) equals the reference's split scaling.
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out.transpose(1, 2).reshape(b, c, length)
        return (x + self.proj_out(out)).reshape(b, c, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that passes the time embedding to the residual blocks it contains."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """guided-diffusion's ``UNetModel`` (2-D). Arguments as in its constructor.

    ``attention_resolutions`` are *downsample factors* (``image_size // resolution``), as
    guided-diffusion's ``create_model`` derives them. ``use_fp16`` is accepted for config
    compatibility only: weights stay float32 (run under ``torch.autocast`` for half precision).
    """

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int = 3,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
    ) -> None:
        super().__init__()
        if dims != 2:
            raise UsageError(f"only 2-D ADM U-Nets are supported, got dims={dims}")
        del use_fp16  # float32 weights; see class docstring
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size, self.in_channels, self.out_channels = image_size, in_channels, out_channels
        self.model_channels, self.num_classes = model_channels, num_classes
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        def res(ch: int, out: int | None = None, **kw: bool) -> ResBlock:
            return ResBlock(ch, emb_dim, dropout, out, use_scale_shift_norm=use_scale_shift_norm,
                            use_checkpoint=use_checkpoint, **kw)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, num_head_channels, use_checkpoint=use_checkpoint,
                                  use_new_attention_order=use_new_attention_order)

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))]
        )
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch), attn(ch, num_heads), res(ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                 _zero(nn.Conv2d(input_ch, out_channels, 3, padding=1)))

    def forward(self, x: Tensor, timesteps: Tensor, y: Tensor | None = None) -> Tensor:
        """``x`` [B, C, H, W] in [-1, 1], ``timesteps`` [B], ``y`` [B] labels if class-conditional."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.num_classes is not None:
            if y is None:
                raise UsageError("this ADM U-Net is class-conditional: pass labels y")
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


_CHANNEL_MULT_BY_SIZE = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                         64: (1, 2, 3, 4)}


def adm_kwargs_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """guided-diffusion's flat ``create_model_and_diffusion`` config → :class:`ADMUNet` kwargs.

    Derives ``channel_mult`` from the image size when empty, attention downsample factors from the
    attention resolutions, 6 output channels with ``learn_sigma`` and 1000 classes with
    ``class_cond`` (as guided-diffusion's ``create_model`` does).
    """
    size = int(config["image_size"])
    mult = config.get("channel_mult", "")
    if isinstance(mult, str) and mult == "":
        if size not in _CHANNEL_MULT_BY_SIZE:
            raise UsageError(f"no default channel_mult for image_size={size}; set channel_mult")
        channel_mult = _CHANNEL_MULT_BY_SIZE[size]
    elif isinstance(mult, str):
        channel_mult = tuple(float(m) if "." in m else int(m) for m in mult.split(","))
    else:
        channel_mult = tuple(mult)
    res = config.get("attention_resolutions", "16,8")
    res_list = [int(r) for r in res.split(",")] if isinstance(res, str) else [int(r) for r in res]
    return {
        "image_size": size,
        "in_channels": 3,
        "model_channels": int(config["num_channels"]),
        "out_channels": 6 if config.get("learn_sigma", False) else 3,
        "num_res_blocks": int(config["num_res_blocks"]),
        "attention_resolutions": [size // r for r in res_list],
        "dropout": float(config.get("dropout", 0.0)),
        "channel_mult": list(channel_mult),
        "conv_resample": True,
        "dims": 2,
        "num_classes": 1000 if config.get("class_cond", False) else None,
        "use_checkpoint": bool(config.get("use_checkpoint", False)),
        "use_fp16": bool(config.get("use_fp16", False)),
        "num_heads": int(config.get("num_heads", 1)),
        "num_head_channels": int(config.get("num_head_channels", -1)),
        "num_heads_upsample": int(config.get("num_heads_upsample", -1)),
        "use_scale_shift_norm": bool(config.get("use_scale_shift_norm", False)),
        "resblock_updown": bool(config.get("resblock_updown", False)),
        "use_new_attention_order": bool(config.get("use_new_attention_order", False)),
    }


def build_adm(config: Mapping[str, Any]) -> ADMUNet:
    """Build from guided-diffusion's flat config (``num_channels`` key) or :class:`ADMUNet` kwargs."""
    if "model_channels" in config:
        return ADMUNet(**config)
    return ADMUNet(**adm_kwargs_from_config(config))
