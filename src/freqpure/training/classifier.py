"""The classifier task: fast CIFAR-10 training (optionally purifier-aware), evaluated per epoch, exported at the end."""

from __future__ import annotations

import json
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
from freqpure.training.augment import augment_batch
from freqpure.training.config import ClassifierTrainConfig, precision_of_amp
from freqpure.training.export import export_classifier
from freqpure.training.init_weights import load_initial_weights
from freqpure.training.loop import LoopContext, run_training

__all__ = ["ClassifierTask", "train_classifier", "evaluate_classifier", "classifier_lr"]


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500, tta: bool = True, precision: str = "fp32", *,
    amp: str | None = None,
) -> float:
    """Top-1 accuracy of ``model`` on ``x [N,3,H,W]`` in [0,1]; ``tta`` averages logits with the flip.

    ``precision``: ``fp32`` or ``bf16`` (autocast); ``amp`` is its deprecated spelling (``none`` = ``fp32``).
    """
    if amp is not None:
        precision = precision_of_amp(amp)
    model.eval()
    dev = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(dev)
        with autocast(precision, dev):
            logits = model(xb).float()
            if tta:
                logits = logits + model(xb.flip(3)).float()
        correct += (logits.argmax(1).cpu() == y[i : i + batch_size]).sum().item()
    return correct / len(x)


def classifier_lr(config: ClassifierTrainConfig, step: int, total: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup_frac`` of training, then linear decay to 0."""
    w = max(1, int(config.warmup_frac * total))
    if step < w:
        return config.lr * (step + 1) / w
    return config.lr * max(0.0, (total - step) / max(1, total - w))


class ClassifierTask:
    """One step: a batch of train images in [0, 1] (each swapped for its purified copy with probability
    ``purified_frac`` when ``purified_data`` is given), flipped and translated; label-smoothed cross-entropy,
    Nesterov SGD (no weight decay on biases/norms), LR warm-up then linear decay over ``epochs``.

    ``max_train_images`` trains on a prefix of a fixed shuffle (tests only).
    """

    def __init__(self, config: ClassifierTrainConfig, device: str | torch.device = "cpu",
                 export_to: str | os.PathLike | None = None, max_train_images: int | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        self.export_to = export_to
        self.max_train_images = max_train_images

    def build(self, ckpt: dict[str, Any] | None) -> None:
        c = self.config
        self.model = ARCHITECTURES[c.arch](**c.model).to(self.device).to(memory_format=torch.channels_last)
        decay, no_decay = [], []
        for p in self.model.parameters():
            (decay if p.ndim > 1 else no_decay).append(p)
        self.opt = torch.optim.SGD(
            [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=c.lr, momentum=c.momentum, nesterov=True,
        )
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
        elif c.init_from:
            load_initial_weights(self.model, c.init_from, "classifier", c.arch, c.model)

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict()}

    def prepare_data(self) -> int:
        c = self.config
        x_tr, y_tr = load_cifar10("train", c.data_dir)
        x_pur = None
        if c.purified_data:
            from freqpure.purified_data import load_purified

            x_pur, self.purified_info = load_purified(c.purified_data, expect_labels=np.asarray(y_tr))
        if self.max_train_images is not None:
            keep = np.sort(np.random.Generator(np.random.PCG64(c.seed)).permutation(len(y_tr))[: self.max_train_images])
            x_tr, y_tr = x_tr[keep], y_tr[keep]
            x_pur = x_pur[keep] if x_pur is not None else None
        self.data = torch.from_numpy(np.ascontiguousarray(x_tr.transpose(0, 3, 1, 2)))
        self.purified = None if x_pur is None else torch.from_numpy(np.ascontiguousarray(x_pur.transpose(0, 3, 1, 2)))
        self.labels = torch.from_numpy(np.array(y_tr, dtype=np.int64))
        x_te, y_te = load_cifar10("test", c.data_dir)
        self.x_test = torch.from_numpy(x_te.transpose(0, 3, 1, 2).copy()).float().div_(255)
        self.y_test = torch.from_numpy(np.array(y_te, dtype=np.int64))
        self.per_epoch = len(self.data) // c.batch_size
        self.model.train()
        return len(self.data)

    def total_steps(self) -> int:
        return self.config.epochs * self.per_epoch

    def train_step(self, step: int, idx: Tensor, gen: torch.Generator) -> tuple[float, float]:
        c, dev = self.config, self.device
        xb = self.data[idx]
        if self.purified is not None:
            swap = torch.rand(len(idx), generator=gen) < c.purified_frac
            xb = torch.where(swap[:, None, None, None], self.purified[idx], xb)
        xb = xb.to(dev).float().div_(255)
        xb = augment_batch(xb, gen, hflip=True, translate=c.translate)
        xb = xb.contiguous(memory_format=torch.channels_last)
        lr = classifier_lr(c, step, self.total_steps())
        for group in self.opt.param_groups:
            group["lr"] = lr
        with autocast(c.precision, dev):
            logits = self.model(xb)
        loss = F.cross_entropy(logits.float(), self.labels[idx].to(dev), label_smoothing=c.label_smoothing)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item(), lr

    def log_extra(self, step: int) -> dict[str, Any]:
        return {"epoch": step / self.per_epoch}

    def after_step(self, step: int, ctx: LoopContext) -> None:
        if step % self.per_epoch == 0 and self.config.eval_every_epoch:
            c = self.config
            acc = evaluate_classifier(self.model, self.x_test, self.y_test, tta=c.tta, precision=c.precision)
            ctx.metrics.write(step=step, epoch=step // self.per_epoch, test_acc=acc, tta=c.tta)
            ctx.bar.write(f"epoch {step // self.per_epoch}: test accuracy {acc:.4f}")
            self.model.train()
            ctx.exclude_elapsed()  # evaluation time is not training throughput

    def on_checkpoint(self, step: int, snap: dict[str, Any], ctx: LoopContext) -> None:
        pass

    def finish(self, step: int, snap: dict[str, Any], ctx: LoopContext) -> None:
        """At completion: full-test-split accuracy (fp32, with and without flip TTA), then export."""
        c = self.config
        if step < self.total_steps():
            return
        acc32 = evaluate_classifier(self.model, self.x_test, self.y_test, tta=c.tta, precision="fp32")
        acc_plain = evaluate_classifier(self.model, self.x_test, self.y_test, tta=False, precision="fp32")
        ctx.metrics.write(step=step, final_test_acc=acc32, final_test_acc_no_tta=acc_plain, tta=c.tta)
        extra: dict[str, Any] = {"test_accuracy_no_tta": round(acc_plain, 4),
                                 "test_accuracy_flip_tta": round(acc32, 4)}
        if c.init_from:
            extra["init_from"] = c.init_from
        if c.purified_data:
            extra["purified_data"] = json.dumps(self.purified_info, sort_keys=True)
            extra["purified_frac"] = c.purified_frac
        targets = [ctx.run_dir / "export" / f"{c.name}.safetensors"]
        if self.export_to:
            targets.append(Path(self.export_to))
        for out in targets:
            export_classifier(snap, out, **extra)


def train_classifier(
    config: ClassifierTrainConfig,
    run_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    resume: bool | None = None,
    stop_after: int | None = None,
    export_to: str | os.PathLike | None = None,
    progress: bool = True,
    max_train_images: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) the classifier in ``run_dir``; returns the final checkpoint dict.

    Evaluates on the full test split (flip TTA) after each epoch; exports to
    ``<run_dir>/export/<name>.safetensors`` (and ``export_to``) when training completes.
    """
    return run_training(ClassifierTask(config, device, export_to, max_train_images), run_dir, resume=resume,
                        stop_after=stop_after, progress=progress)
