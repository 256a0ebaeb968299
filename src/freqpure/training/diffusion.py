"""The diffusion task: ε-prediction DDPM training with EMA weights, exported every ``export_every`` steps."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from freqpure.data import load_cifar10
from freqpure.models.bundled import ARCHITECTURES
from freqpure.runtime import autocast
from freqpure.schedules import LinearBetaSchedule
from freqpure.training.augment import augment_batch, sample_steps
from freqpure.training.config import DiffusionTrainConfig
from freqpure.training.export import export_diffusion
from freqpure.training.init_weights import load_initial_weights
from freqpure.training.loop import LoopContext, run_training

__all__ = ["DiffusionTask", "train_diffusion", "denoise_mse", "diffusion_lr"]


@torch.no_grad()
def denoise_mse(
    net: nn.Module, x0: Tensor, step: int = 99, seed: int = 0, schedule: LinearBetaSchedule | None = None
) -> tuple[float, float]:
    """One-shot denoising error at step index ``step`` on images ``x0 [B,3,H,W]`` in [-1, 1].

    Returns ``(mse of the x0 estimate, mse of the noisy input x_t / sqrt(ᾱ))``, both against ``x0``.
    """
    schedule = schedule or LinearBetaSchedule()
    a = schedule.alpha_bar(step).float()
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0.shape, generator=g).to(x0.device)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    t = torch.full((x0.shape[0],), float(step), device=x0.device)
    x0_hat = (xt - (1 - a).sqrt() * net(xt, t).float()) / a.sqrt()
    return F.mse_loss(x0_hat.clamp(-1, 1), x0).item(), F.mse_loss(xt / a.sqrt(), x0).item()


def diffusion_lr(config: DiffusionTrainConfig, step: int) -> float:
    """Linear warm-up to ``lr``; then constant, or cosine decay to ``lr_min`` at ``config.steps``."""
    if step < config.warmup:
        return config.lr * (step + 1) / max(1, config.warmup)
    if config.lr_schedule == "constant":
        return config.lr
    frac = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    return config.lr_min + 0.5 * (config.lr - config.lr_min) * (1.0 + math.cos(math.pi * frac))


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


class DiffusionTask:
    """One step: a batch of train images in [-1, 1], flipped, noised to step indices in 0..t_max-1;
    loss = MSE of the predicted noise; Adam, gradient clipping, EMA (decay warm-up ``(1+s)/(10+s)``).

    Exports (``<run_dir>/export/<name>.safetensors`` and ``export_to``) hold the EMA weights, their
    ``t_max`` and the EMA's x0-MSE at t = 100 on ``eval_images`` test images (also logged).
    """

    def __init__(self, config: DiffusionTrainConfig, device: str | torch.device = "cpu",
                 export_to: str | os.PathLike | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        self.export_to = export_to

    def build(self, ckpt: dict[str, Any] | None) -> None:
        c = self.config
        self.model = ARCHITECTURES[c.arch](**c.model).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        if c.init_from and ckpt is None:
            load_initial_weights(self.model, c.init_from, "diffusion", c.arch, c.model)
            self.ema.load_state_dict(self.model.state_dict())
        self.opt = torch.optim.Adam(self.model.parameters(), lr=c.lr)
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
            self.ema.load_state_dict(ckpt["ema"])
            self.opt.load_state_dict(ckpt["optimizer"])

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.opt.state_dict()}

    def prepare_data(self) -> int:
        c = self.config
        x_all, _ = load_cifar10("train", c.data_dir)
        self.data = torch.from_numpy(np.ascontiguousarray(x_all.transpose(0, 3, 1, 2)))  # uint8 [N,3,32,32]
        x_eval_u8, _ = load_cifar10("test", c.data_dir)
        self.x_eval = torch.from_numpy(x_eval_u8[: c.eval_images].transpose(0, 3, 1, 2).copy()).float() / 127.5 - 1
        self.abar = LinearBetaSchedule().alphas_cumprod.float().to(self.device)
        self.model.train()
        return len(self.data)

    def total_steps(self) -> int:
        return self.config.steps

    def train_step(self, step: int, idx: Tensor, gen: torch.Generator) -> tuple[float, float]:
        c, dev = self.config, self.device
        x0 = self.data[idx].to(dev).float() / 127.5 - 1.0
        x0 = augment_batch(x0, gen, hflip=c.hflip) if c.hflip else x0
        t = sample_steps(x0.shape[0], gen, c.t_max, c.t_low_frac, c.t_low_max).to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        a = self.abar[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        lr = diffusion_lr(c, step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        with autocast(c.precision, dev):
            pred = self.model(xt, t.float())
        loss = F.mse_loss(pred.float(), noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.opt.step()
        _ema_update(self.ema, self.model, min(c.ema_decay, (1 + step) / (10 + step)))
        return loss.item(), lr

    def log_extra(self, step: int) -> dict[str, Any]:
        return {}

    def after_step(self, step: int, ctx: LoopContext) -> None:
        pass

    def export(self, step: int, snap: dict[str, Any], ctx: LoopContext) -> None:
        """Log the EMA's x0-MSE at t = 100 and write the export file(s)."""
        ema_mse, noisy_mse = denoise_mse(self.ema, self.x_eval.to(self.device), 99)
        ctx.metrics.write(step=step, eval_denoise_mse_t100=ema_mse, eval_noisy_mse_t100=noisy_mse)
        targets = [ctx.run_dir / "export" / f"{self.config.name}.safetensors"]
        if self.export_to:
            targets.append(Path(self.export_to))
        for out in targets:
            export_diffusion(snap, out, denoise_mse_t100=round(ema_mse, 6))

    def on_checkpoint(self, step: int, snap: dict[str, Any], ctx: LoopContext) -> None:
        if self.config.export_every and step % self.config.export_every == 0:
            self.export(step, snap, ctx)

    def finish(self, step: int, snap: dict[str, Any], ctx: LoopContext) -> None:
        every = self.config.export_every
        if step >= self.config.steps or ctx.stopped or (every and step % every):
            self.export(step, snap, ctx)


def train_diffusion(
    config: DiffusionTrainConfig,
    run_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    resume: bool | None = None,
    stop_after: int | None = None,
    export_to: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) the ε-model in ``run_dir``; returns the final checkpoint dict.

    ``stop_after``: stop (with a checkpoint) once this global step is reached, as if killed there.
    ``export_to``: also write the EMA weights there every ``export_every`` steps and at the end.
    """
    return run_training(DiffusionTask(config, device, export_to), run_dir, resume=resume,
                        stop_after=stop_after, progress=progress)
