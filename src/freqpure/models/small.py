"""Small bundled CIFAR-10 networks: an ε-prediction UNet and a fast ResNet-style classifier.

Both are sized for CPU training and inference (see ``docs/models.md`` for the measured numbers).

* :class:`SmallUNet` — ``net(x [B,3,H,W] in [-1,1] diffusion space, t [B] float step indices 0..999)
  -> ε [B,3,H,W]``. Wrap it with :class:`freqpure.models.adapters.EpsModel`.
* :class:`FastResNet` — ``net(x [B,3,H,W] in [0,1]) -> logits [B,10]``; the per-channel
  normalisation lives inside the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SmallUNet", "FastResNet", "timestep_embedding", "CIFAR10_MEAN", "CIFAR10_STD"]

# Per-channel statistics of the shared CIFAR-10 train split, pixels in [0, 1].
CIFAR10_MEAN = (0.4913, 0.4821, 0.4465)
CIFAR10_STD = (0.2452, 0.2428, 0.2606)


# ----------------------------------------------------------------------------------------------
# Diffusion UNet
# ----------------------------------------------------------------------------------------------
def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) step indices: ``t [B] -> [B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _norm(channels: int) -> nn.GroupNorm:
    groups = 32 if channels % 32 == 0 else 8 if channels % 8 == 0 else 1
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, time embedding added in between, residual connection."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = _norm(out_ch)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head spatial self-attention with a residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None], v.transpose(1, 2)[:, None]
        )  # [B, 1, HW, C]
        return x + self.proj(out[:, 0].transpose(1, 2).reshape(b, c, h, w))


class SmallUNet(nn.Module):
    """A compact DDPM-style ε-prediction UNet.

    Args:
        base: channels at full resolution.
        mults: channel multiplier per resolution level (each level after the first halves H, W).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_levels: indices of levels that get self-attention after each residual block.
        dropout: dropout inside residual blocks.
        in_channels: image channels.

    ``forward(x [B,C,H,W] in [-1,1] space, t [B] float step indices) -> ε [B,C,H,W]``.
    H and W must be divisible by ``2 ** (len(mults) - 1)``.
    """

    def __init__(
        self,
        base: int = 64,
        mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_levels: Sequence[int] = (2,),
        dropout: float = 0.1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.base = base
        emb_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(in_channels, base, 3, padding=1)

        self.down = nn.ModuleList()
        chans = [base]
        ch = base
        for level, mult in enumerate(mults):
            for _ in range(num_res_blocks):
                out = base * mult
                self.down.append(self._stage(ch, out, emb_dim, dropout, level in attn_levels))
                ch = out
                chans.append(ch)
            if level != len(mults) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                chans.append(ch)

        self.mid = nn.ModuleList(
            [ResBlock(ch, ch, emb_dim, dropout), SelfAttention(ch), ResBlock(ch, ch, emb_dim, dropout)]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(mults))):
            for _ in range(num_res_blocks + 1):
                out = base * mult
                self.up.append(self._stage(ch + chans.pop(), out, emb_dim, dropout, level in attn_levels))
                ch = out
            if level != 0:
                upsample = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1))
                self.up.append(upsample)

        self.out_norm = _norm(ch)
        self.out_conv = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    @staticmethod
    def _stage(in_ch: int, out_ch: int, emb_dim: int, dropout: float, attn: bool) -> nn.ModuleList:
        mods: list[nn.Module] = [ResBlock(in_ch, out_ch, emb_dim, dropout)]
        if attn:
            mods.append(SelfAttention(out_ch))
        return nn.ModuleList(mods)

    @staticmethod
    def _run(stage: nn.Module, h: Tensor, emb: Tensor) -> Tensor:
        if isinstance(stage, nn.ModuleList):
            for m in stage:
                h = m(h, emb) if isinstance(m, ResBlock) else m(h)
            return h
        return stage(h)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.base))
        h = self.stem(x)
        skips = [h]
        for stage in self.down:
            h = self._run(stage, h, emb)
            skips.append(h)
        for m in self.mid:
            h = m(h, emb) if isinstance(m, ResBlock) else m(h)
        for stage in self.up:
            if isinstance(stage, nn.ModuleList):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(stage, h, emb)
        return self.out_conv(F.silu(self.out_norm(h)))


# ----------------------------------------------------------------------------------------------
# Classifier
# ----------------------------------------------------------------------------------------------
class ConvBN(nn.Sequential):
    """3x3 conv (no bias) -> BatchNorm -> GELU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.GELU())


class ConvGroup(nn.Module):
    """conv -> 2x2 max-pool -> conv, with a residual on the pooled features when ``residual``."""

    def __init__(self, in_ch: int, out_ch: int, residual: bool = True) -> None:
        super().__init__()
        self.conv1 = ConvBN(in_ch, out_ch)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = ConvBN(out_ch, out_ch)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool(self.conv1(x))
        return h + self.conv2(h) if self.residual else self.conv2(h)


class FastResNet(nn.Module):
    """A ResNet-9-like CIFAR classifier for fast CPU training (in the spirit of Page's / airbench's nets).

    Args:
        widths: channels of the three conv groups (spatial 32→16→8→4).
        stem: channels of the first conv.
        num_classes: number of output classes.
        scale: logits are multiplied by this (a temperature that stabilises early training).
        mean, std: per-channel input normalisation applied inside the model.
        flip_tta: in eval mode, return the mean logits of ``x`` and its horizontal mirror (flip
            test-time augmentation as part of the network, so every attack differentiates through
            it); training mode sees single images.

    ``forward(x [B,3,H,W] in [0,1]) -> logits [B, num_classes]``.
    """

    def __init__(
        self,
        widths: Sequence[int] = (64, 256, 256),
        stem: int = 32,
        num_classes: int = 10,
        scale: float = 0.125,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        flip_tta: bool = False,
    ) -> None:
        super().__init__()
        self.flip_tta = flip_tta
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.stem = ConvBN(len(mean), stem)
        chans = [stem, *widths]
        self.groups = nn.Sequential(*[ConvGroup(chans[i], chans[i + 1]) for i in range(len(widths))])
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        self.scale = scale

    def _logits(self, x: Tensor) -> Tensor:
        h = self.groups(self.stem((x - self.mean) / self.std))
        return self.head(self.pool(h).flatten(1)) * self.scale

    def forward(self, x: Tensor) -> Tensor:
        if self.flip_tta and not self.training:
            return self._logits(torch.cat([x, x.flip(3)])).view(2, len(x), -1).mean(0)
        return self._logits(x)
