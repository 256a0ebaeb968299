"""NCSN++ / DDPM++ score network in score_sde's layout (the CIFAR-10 model of DiffPure and FreqPure).

Written from the architecture's description so that score_sde checkpoints load with ``strict=True``:
every submodule lives in one flat ``all_modules`` ModuleList whose indices are part of the key names,
attention projections are ``NIN`` layers storing ``W`` as ``[in, out]`` plus ``b``, GroupNorm uses
``min(C // 4, 32)`` groups with eps 1e-6, and ``sigmas`` (float64 ``[num_scales]``) is a buffer.

Supported options (the ones the published CIFAR-10 checkpoint uses): BigGAN-style residual blocks
with nearest up / average down sampling (``fir=False``), DDPM attention, positional time embedding,
no progressive growing, GroupNorm, swish. Anything else raises ``ValueError``.

Forward: ``net(x [B, C, H, W] in [-1, 1], time_cond float [B]) -> [B, C, H, W]``. ``time_cond`` is
the continuous-VP label ``t · 999`` (fractional values are used as-is by the sinusoidal embedding);
the output is ε (DiffPure's score is ``-net(x, t·999) / std(t)``). With ``scale_by_sigma=True`` the
output is divided by ``sigmas[time_cond.long()]``, so labels must then be < ``num_scales``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from freqpure.errors import UsageError

__all__ = ["NCSNpp", "build_ncsnpp", "ncsnpp_kwargs_from_config", "ncsnpp_sigmas"]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def ncsnpp_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> Tensor:
    """Geometric noise levels from ``sigma_max`` down to ``sigma_min``; float64 ``[num_scales]``."""
    return torch.exp(
        torch.linspace(math.log(sigma_max), math.log(sigma_min), num_scales, dtype=torch.float64)
    )


def _variance_scaling_(weight: Tensor, scale: float, fan_in: int, fan_out: int) -> None:
    """DDPM's default init: uniform with variance ``scale / fan_avg`` (``scale=0`` → ~zero)."""
    scale = max(scale, 1e-10)
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def _conv(in_ch: int, out_ch: int, kernel: int, init_scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
    field = kernel * kernel
    _variance_scaling_(conv.weight, init_scale, in_ch * field, out_ch * field)
    nn.init.zeros_(conv.bias)
    return conv


def _linear(in_dim: int, out_dim: int) -> nn.Linear:
    lin = nn.Linear(in_dim, out_dim)
    _variance_scaling_(lin.weight, 1.0, in_dim, out_dim)
    nn.init.zeros_(lin.bias)
    return lin


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(channels // 4, 32), channels, eps=1e-6)


def positional_embedding(t: Tensor, dim: int, max_positions: int = 10000) -> Tensor:
    """Sinusoidal embedding ``[sin, cos]`` of float labels ``t [B]`` → ``[B, dim]``."""
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(max_positions) / (half - 1))
    )
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class NIN(nn.Module):
    """Per-pixel linear map; ``W`` is stored ``[in, out]`` (score_sde's layout), ``b`` is ``[out]``."""

    def __init__(self, in_dim: int, out_dim: int, init_scale: float = 0.1) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(in_dim, out_dim))
        self.b = nn.Parameter(torch.zeros(out_dim))
        _variance_scaling_(self.W, init_scale, in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in, H, W]`` → ``[B, out, H, W]``."""
        return torch.einsum("bchw,co->bohw", x, self.W) + self.b[:, None, None]


class AttnBlockpp(nn.Module):
    """Single-head self-attention over all pixels with a (rescaled) residual connection."""

    def __init__(self, channels: int, skip_rescale: bool, init_scale: float) -> None:
        super().__init__()
        self.GroupNorm_0 = _group_norm(channels)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        normed = self.GroupNorm_0(x)
        # [B, 1, HW, C] tokens; the default SDPA scale 1/sqrt(C) is the reference's C^-1/2.
        q, k, v = (nin(normed).reshape(b, 1, c, h * w).transpose(-1, -2) for nin in
                   (self.NIN_0, self.NIN_1, self.NIN_2))
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        out = self.NIN_3(out)
        return (x + out) * _INV_SQRT2 if self.skip_rescale else x + out


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style residual block, optionally resampling by 2 (nearest up / average down)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        *,
        temb_dim: int | None,
        up: bool = False,
        down: bool = False,
        dropout: float = 0.1,
        skip_rescale: bool = True,
        init_scale: float = 0.0,
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = _group_norm(in_ch)
        self.Conv_0 = _conv(in_ch, out_ch, 3)
        if temb_dim is not None:
            self.Dense_0 = _linear(temb_dim, out_ch)
        self.GroupNorm_1 = _group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = _conv(out_ch, out_ch, 3, init_scale=init_scale)
        self.has_shortcut = in_ch != out_ch or up or down
        if self.has_shortcut:
            self.Conv_2 = _conv(in_ch, out_ch, 1)
        self.up, self.down, self.skip_rescale = up, down, skip_rescale

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: Tensor, temb: Tensor | None) -> Tensor:
        h = self._resample(F.silu(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(F.silu(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(F.silu(self.GroupNorm_1(h))))
        if self.has_shortcut:
            x = self.Conv_2(x)
        return (x + h) * _INV_SQRT2 if self.skip_rescale else x + h


class NCSNpp(nn.Module):
    """NCSN++ U-Net (score_sde ``ncsnpp``), BigGAN blocks, positional time embedding.

    Args mirror score_sde's config fields (``config.model.*`` plus ``image_size``/``num_channels``/
    ``centered`` from ``config.data``). The published CIFAR-10 model is the default.
    """

    def __init__(
        self,
        *,
        image_size: int = 32,
        num_channels: int = 3,
        centered: bool = True,
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 8,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        conditional: bool = True,
        skip_rescale: bool = True,
        init_scale: float = 0.0,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        num_scales: int = 1000,
        scale_by_sigma: bool = False,
    ) -> None:
        super().__init__()
        self.image_size, self.num_channels, self.centered = image_size, num_channels, centered
        self.nf, self.num_res_blocks, self.conditional = nf, num_res_blocks, conditional
        self.attn_resolutions = tuple(attn_resolutions)
        self.num_resolutions = len(ch_mult)
        self.scale_by_sigma = scale_by_sigma
        self.register_buffer("sigmas", ncsnpp_sigmas(sigma_min, sigma_max, num_scales))

        temb_dim = 4 * nf if conditional else None

        def block(in_ch: int, out_ch: int | None = None, **kw: bool) -> ResnetBlockBigGANpp:
            return ResnetBlockBigGANpp(in_ch, out_ch, temb_dim=temb_dim, dropout=dropout,
                                       skip_rescale=skip_rescale, init_scale=init_scale, **kw)

        def attn(ch: int) -> AttnBlockpp:
            return AttnBlockpp(ch, skip_rescale=skip_rescale, init_scale=init_scale)

        resolutions = [image_size // 2**i for i in range(self.num_resolutions)]
        modules: list[nn.Module] = []
        if conditional:
            modules += [_linear(nf, 4 * nf), _linear(4 * nf, 4 * nf)]
        modules.append(_conv(num_channels, nf, 3))
        skip_channels, ch = [nf], nf
        for level, mult in enumerate(ch_mult):  # down path
            for _ in range(num_res_blocks):
                modules.append(block(ch, nf * mult))
                ch = nf * mult
                if resolutions[level] in self.attn_resolutions:
                    modules.append(attn(ch))
                skip_channels.append(ch)
            if level != self.num_resolutions - 1:
                modules.append(block(ch, down=True))
                skip_channels.append(ch)
        modules += [block(ch), attn(ch), block(ch)]  # middle
        for level in reversed(range(self.num_resolutions)):  # up path
            for _ in range(num_res_blocks + 1):
                modules.append(block(ch + skip_channels.pop(), nf * ch_mult[level]))
                ch = nf * ch_mult[level]
            if resolutions[level] in self.attn_resolutions:
                modules.append(attn(ch))
            if level != 0:
                modules.append(block(ch, up=True))
        modules += [_group_norm(ch), _conv(ch, num_channels, 3, init_scale=init_scale)]
        self.all_modules = nn.ModuleList(modules)

    def forward(self, x: Tensor, time_cond: Tensor) -> Tensor:
        """``x`` [B, C, H, W] in [-1, 1] (or [0, 1] if not ``centered``), ``time_cond`` float [B]."""
        mods: Iterator[nn.Module] = iter(self.all_modules)
        temb = None
        if self.conditional:
            temb = next(mods)(positional_embedding(time_cond, self.nf))
            temb = next(mods)(F.silu(temb))
        if not self.centered:
            x = 2.0 * x - 1.0
        hs = [next(mods)(x)]
        for level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(mods)(hs[-1], temb)
                if h.shape[-1] in self.attn_resolutions:
                    h = next(mods)(h)
                hs.append(h)
            if level != self.num_resolutions - 1:
                hs.append(next(mods)(hs[-1], temb))
        h = next(mods)(hs[-1], temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)
        for level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, hs.pop()], dim=1), temb)
            if h.shape[-1] in self.attn_resolutions:
                h = next(mods)(h)
            if level != 0:
                h = next(mods)(h, temb)
        h = F.silu(next(mods)(h))
        h = next(mods)(h)
        if self.scale_by_sigma:
            h = h / self.sigmas[time_cond.long()].to(h.dtype).reshape(-1, 1, 1, 1)
        return h


_SUPPORTED = {
    "name": "ncsnpp",
    "resblock_type": "biggan",
    "progressive": "none",
    "progressive_input": "none",
    "attention_type": "ddpm",
    "embedding_type": "positional",
    "normalization": "GroupNorm",
    "nonlinearity": "swish",
    "fir": False,
    "resamp_with_conv": True,
    "conv_size": 3,
}

_MODEL_KWARGS = ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "conditional",
                 "skip_rescale", "init_scale", "sigma_min", "sigma_max", "num_scales", "scale_by_sigma")


def ncsnpp_kwargs_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """score_sde's nested config (``{'data': ..., 'model': ...}``) → :class:`NCSNpp` kwargs.

    Raises ``ValueError`` for options this implementation does not cover.
    """
    data, model = config.get("data", {}), config["model"]
    for key, wanted in _SUPPORTED.items():
        if key in model and model[key] != wanted:
            raise UsageError(f"NCSN++ option model.{key}={model[key]!r} is not supported (only {wanted!r})")
    kwargs = {key: model[key] for key in _MODEL_KWARGS if key in model}
    for key in ("ch_mult", "attn_resolutions"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    for key in ("image_size", "num_channels", "centered"):
        if key in data:
            kwargs[key] = data[key]
    return kwargs


def build_ncsnpp(config: Mapping[str, Any]) -> NCSNpp:
    """Build from score_sde's nested config or from flat :class:`NCSNpp` kwargs."""
    if "model" in config and isinstance(config["model"], Mapping):
        return NCSNpp(**ncsnpp_kwargs_from_config(config))
    return NCSNpp(**config)
