"""Training loops for the bundled CIFAR-10 models: a DDPM ε-model and a fast classifier.

Both loops are seeded and resumable: a checkpoint (model, EMA, optimizer, step, RNG states) is
written atomically to ``<run_dir>/checkpoint.pt`` every ``ckpt_every`` steps and on SIGINT/SIGTERM,
and a restart with the same ``run_dir`` continues the exact same trajectory (same data order,
augmentation, noise and dropout draws). Progress goes to ``<run_dir>/metrics.jsonl``.

Randomness: the epoch's data order comes from a generator seeded with ``(seed, epoch)``; every other
draw (augmentation, diffusion step indices and noise) comes from one ``torch.Generator`` whose state is
checkpointed; dropout uses torch's global generator, seeded once and checkpointed as well.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from freqpure.data import load_cifar10
from freqpure.errors import NotFoundError, UsageError
from freqpure.models.bundled import ARCHITECTURES
from freqpure.schedules import LinearBetaSchedule

__all__ = [
    "DiffusionTrainConfig",
    "ClassifierTrainConfig",
    "train_diffusion",
    "train_classifier",
    "export_run",
    "load_checkpoint",
    "evaluate_classifier",
    "denoise_mse",
    "sample_steps",
    "augment_batch",
    "summarize_run",
    "plot_run",
    "CHECKPOINT",
]

CHECKPOINT = "checkpoint.pt"
ARCHS: dict[str, Callable[..., nn.Module]] = ARCHITECTURES


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------
@dataclass
class DiffusionTrainConfig:
    """ε-prediction DDPM training on the CIFAR-10 train split (linear β 1e-4..2e-2, 1000 steps).

    ``t_low_frac`` of each batch draws its step index uniformly from ``0..t_low_max-1``, the rest
    uniformly from ``0..999`` (``t_low_frac=0``: plain DDPM). Purification only runs the reverse
    chain from small/moderate noise levels, so a mild emphasis there buys accuracy where it is used
    while the whole range is still trained.
    """

    name: str = "cifar10-ddpm-small"
    arch: str = "small-unet"
    model: dict[str, Any] = field(
        default_factory=lambda: {
            "base": 32,
            "mults": [1, 2, 2, 2],
            "num_res_blocks": 2,
            "attn_levels": [2],
            "dropout": 0.0,
        }
    )
    steps: int = 1_000_000  # effectively "until stopped": the LR is constant after warm-up
    batch_size: int = 64
    lr: float = 4e-4
    warmup: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    t_low_frac: float = 0.5
    t_low_max: int = 400
    t_max: int = 1000  # train step indices 0..t_max-1 only (a purification-range model: t_max=200)
    lr_schedule: str = "constant"  # "constant" after warm-up, or "cosine" decay to lr_min at `steps`
    lr_min: float = 0.0
    init_from: str | None = None  # start from a bundled diffusion model's (or a .safetensors file's) weights
    hflip: bool = True
    amp: str = "bf16"  # "bf16" autocast or "none"
    seed: int = 0
    log_every: int = 25
    ckpt_every: int = 250
    export_every: int = 1000
    eval_images: int = 256
    data_dir: str | None = None


@dataclass
class ClassifierTrainConfig:
    """Fast CIFAR-10 classifier: label smoothing, Nesterov SGD, linear warm-up/decay, flip + translate.

    Purifier-aware fine-tuning: ``init_from`` (a bundled classifier name or a ``.safetensors`` path)
    starts from trained weights, and ``purified_data`` (a :func:`freqpure.purified_data.purify_split`
    file of the train split) swaps each training image for its purified copy with probability
    ``purified_frac`` before augmentation, so the classifier learns the detail a purifier re-draws.
    """

    name: str = "cifar10-resnet-small"
    arch: str = "fast-resnet"
    model: dict[str, Any] = field(default_factory=lambda: {"widths": [64, 256, 256], "stem": 32})
    epochs: int = 20
    batch_size: int = 512
    lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_frac: float = 0.2
    label_smoothing: float = 0.2
    translate: int = 2
    amp: str = "bf16"
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 50
    eval_every_epoch: bool = True
    tta: bool = True
    data_dir: str | None = None
    init_from: str | None = None
    purified_data: str | None = None
    purified_frac: float = 0.5


def config_from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Build a config dataclass from a dict, rejecting unknown keys."""
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise UsageError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return cls(**d)


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------
def _autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    if amp != "bf16":
        raise UsageError(f"amp must be 'bf16' or 'none', got {amp!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_write_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_safetensors(state: dict[str, Tensor], path: Path, metadata: dict[str, str], fp16: bool = True) -> None:
    """Write a state dict (fp16 floats when ``fp16``) atomically with string metadata."""
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if fp16 and v.is_floating_point():
            v = v.half()
        out[k] = v.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(out, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _Metrics:
    """Append-only JSONL log that drops rows beyond the resumed step."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        if path.exists():
            rows = [ln for ln in path.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in rows if json.loads(ln).get("step", 0) <= resume_step]
            _atomic_write_text("".join(ln + "\n" for ln in kept), path)

    def write(self, **row: Any) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

class _LossWindow:
    """Running mean of the loss and throughput since the last log line."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.reset()

    def reset(self) -> None:
        self.total, self.count, self.since = 0.0, 0, time.time()

    def add(self, loss: float) -> None:
        self.total += loss
        self.count += 1

    def flush(self, metrics: _Metrics, bar: Any, step: int, lr: float, **extra: Any) -> None:
        """Write one metrics row (mean loss, lr, images/s), show the loss on the bar, start a new window."""
        now = time.time()
        mean = self.total / self.count
        metrics.write(step=step, **extra, loss=mean, lr=lr,
                      images_per_s=self.count * self.batch_size / max(now - self.since, 1e-9), time=now)
        bar.set_postfix(loss=f"{mean:.4f}")
        self.reset()



class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag so the loop can checkpoint before exiting."""

    def __init__(self) -> None:
        self.stop = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.stop = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _prepare_run_dir(run_dir: Path, config: Any, resume: bool | None) -> dict[str, Any] | None:
    """Create ``run_dir``, save/compare the config, and return the checkpoint to resume from (if any)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT
    cfg = asdict(config)
    cfg_path = run_dir / "config.json"
    if ckpt_path.exists() and resume is not False:
        ckpt = load_checkpoint(ckpt_path)
        old = ckpt["config"]
        # Settings that do not change the trajectory may differ on resume (the classifier's
        # ``epochs`` sets its LR schedule, so it may not).
        ignore = {"log_every", "ckpt_every", "export_every", "steps", "data_dir", "eval_images"}
        diff = {k: (old.get(k), v) for k, v in cfg.items() if k not in ignore and old.get(k) != v}
        if diff:
            raise UsageError(f"{run_dir} holds a run with a different config {diff}; use a new --out dir")
        _atomic_write_text(json.dumps(cfg, indent=2) + "\n", cfg_path)
        return ckpt
    if resume:
        raise NotFoundError(f"--resume given but {ckpt_path} does not exist")
    if ckpt_path.exists():
        raise UsageError(f"{run_dir} already holds a checkpoint; resume it or choose another --out dir")
    _atomic_write_text(json.dumps(cfg, indent=2) + "\n", cfg_path)
    return None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training checkpoint (``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _epoch_order(seed: int, epoch: int, n: int) -> Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _batches(seed: int, n: int, batch_size: int, start_step: int) -> Iterator[tuple[int, Tensor]]:
    """Endless (step, indices) stream: epochs of ``n // batch_size`` full batches, resumable at any step."""
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise UsageError(f"batch size {batch_size} exceeds the {n} training images")
    step = start_step
    while True:
        epoch, i = divmod(step, per_epoch)
        order = _epoch_order(seed, epoch, n)
        for j in range(i, per_epoch):
            yield step, order[j * batch_size : (j + 1) * batch_size]
            step += 1


def augment_batch(x: Tensor, gen: torch.Generator, hflip: bool = True, translate: int = 0) -> Tensor:
    """Random horizontal flip and translation (reflect padding) of a batch ``[B, C, H, W]``.

    Vectorised: one mask for the flips, and one slice per distinct shift (``(2·translate+1)²`` at most).
    """
    b = x.shape[0]
    if hflip:
        flip = torch.rand(b, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if translate > 0:
        r = translate
        h, w = x.shape[-2:]
        padded = F.pad(x, (r, r, r, r), mode="reflect")
        shift = torch.randint(0, 2 * r + 1, (b, 2), generator=gen)
        out = torch.empty_like(x)
        code = shift[:, 0] * (2 * r + 1) + shift[:, 1]
        for c in torch.unique(code).tolist():
            idx = torch.nonzero(code == c).squeeze(1)
            dy, dx = divmod(c, 2 * r + 1)
            out[idx] = padded[idx, :, dy : dy + h, dx : dx + w]
        x = out
    return x


def sample_steps(b: int, gen: torch.Generator, num_steps: int, low_frac: float, low_max: int) -> Tensor:
    """Step indices ``[b]`` (int64).

    Each index is drawn uniformly from ``0..low_max-1`` with probability ``low_frac``, else uniformly
    from ``0..num_steps-1``.
    """
    full = torch.randint(0, num_steps, (b,), generator=gen)
    if low_frac <= 0:
        return full
    low = torch.randint(0, low_max, (b,), generator=gen)
    pick = torch.rand(b, generator=gen) < low_frac
    return torch.where(pick, low, full)


def _rng_state(gen: torch.Generator) -> dict[str, Tensor]:
    return {"gen": gen.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(gen: torch.Generator, state: dict[str, Tensor]) -> None:
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch"])


def _config_metadata(kind: str, arch: str, model_kwargs: dict[str, Any], **extra: Any) -> dict[str, str]:
    meta = {"freqpure_kind": kind, "freqpure_arch": arch, "freqpure_config": json.dumps(model_kwargs)}
    meta.update({f"freqpure_{k}": v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return meta


# ----------------------------------------------------------------------------------------------
# Diffusion
# ----------------------------------------------------------------------------------------------
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


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        e = list(ema.parameters())
        m = list(model.parameters())
        torch._foreach_lerp_(e, m, 1.0 - decay)


def export_diffusion(ckpt: dict[str, Any], out: Path, **extra: Any) -> Path:
    """Write the EMA weights of a diffusion checkpoint as a bundled safetensors file."""
    cfg = ckpt["config"]
    meta = _config_metadata(
        "diffusion",
        cfg["arch"],
        cfg["model"],
        train_step=ckpt["step"],
        schedule="linear-beta 1e-4..2e-2 x1000",
        t_max=cfg.get("t_max", 1000),
        **extra,
    )
    save_safetensors(ckpt["ema"], out, meta)
    return out


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
    """Train (or resume) the ε-model; returns the final checkpoint dict.

    ``stop_after``: stop (with a checkpoint) once this global step is reached, as if killed there.
    ``export_to``: also write the EMA weights there every ``export_every`` steps and at the end.
    """
    run_dir = Path(run_dir)
    dev = torch.device(device)
    ckpt = _prepare_run_dir(run_dir, config, resume)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = ARCHS[config.arch](**config.model).to(dev)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    if config.lr_schedule not in ("constant", "cosine"):
        raise UsageError(f"lr_schedule must be 'constant' or 'cosine', got {config.lr_schedule!r}")
    if not 1 <= config.t_max <= 1000:
        raise UsageError(f"t_max must be in 1..1000, got {config.t_max}")
    if config.init_from and ckpt is None:
        _load_initial_weights(model, config.init_from, "diffusion", config.arch)
        ema.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    step = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        _set_rng_state(gen, ckpt["rng"])
        step = int(ckpt["step"])
    metrics = _Metrics(run_dir / "metrics.jsonl", step)

    x_all, _ = load_cifar10("train", config.data_dir)
    data = torch.from_numpy(np.ascontiguousarray(x_all.transpose(0, 3, 1, 2)))  # uint8 [N,3,32,32]
    x_eval_u8, _ = load_cifar10("test", config.data_dir)
    x_eval = torch.from_numpy(x_eval_u8[: config.eval_images].transpose(0, 3, 1, 2).copy()).float() / 127.5 - 1
    schedule = LinearBetaSchedule()
    abar = schedule.alphas_cumprod.float().to(dev)

    def snapshot() -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "rng": _rng_state(gen),
            "config": asdict(config),
            "time": time.time(),
        }

    def save() -> dict[str, Any]:
        snap = snapshot()
        _atomic_torch_save(snap, run_dir / CHECKPOINT)
        return snap

    def export(snap: dict[str, Any]) -> None:
        ema_mse, noisy_mse = denoise_mse(ema, x_eval.to(dev), 99)
        metrics.write(step=step, eval_denoise_mse_t100=ema_mse, eval_noisy_mse_t100=noisy_mse)
        targets = [run_dir / "export" / f"{config.name}.safetensors"]
        if export_to:
            targets.append(Path(export_to))
        for out in targets:
            export_diffusion(snap, out, denoise_mse_t100=round(ema_mse, 6))

    end = min(config.steps, stop_after) if stop_after is not None else config.steps
    model.train()
    window = _LossWindow(config.batch_size)
    bar = tqdm(
        total=end,
        initial=step,
        disable=not progress,
        desc=config.name,
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )
    with _StopFlag() as flag:
        batches = _batches(config.seed, len(data), config.batch_size, step)
        while step < end and not flag.stop:
            _, idx = next(batches)
            x0 = data[idx].to(dev).float() / 127.5 - 1.0
            x0 = augment_batch(x0, gen, hflip=config.hflip) if config.hflip else x0
            t = sample_steps(x0.shape[0], gen, config.t_max, config.t_low_frac, config.t_low_max).to(dev)
            noise = torch.randn(x0.shape, generator=gen).to(dev)
            a = abar[t][:, None, None, None]
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            lr = _diffusion_lr(config, step)
            for group in opt.param_groups:
                group["lr"] = lr
            with _autocast(config.amp, dev):
                pred = model(xt, t.float())
            loss = F.mse_loss(pred.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            _ema_update(ema, model, min(config.ema_decay, (1 + step) / (10 + step)))
            step += 1
            window.add(loss.item())
            bar.update(1)
            if step % config.log_every == 0 or step == end:
                window.flush(metrics, bar, step, lr)
            if step % config.ckpt_every == 0:
                snap = save()
                if config.export_every and step % config.export_every == 0:
                    export(snap)
    bar.close()
    snap = save()
    if step >= config.steps or flag.stop or (config.export_every and step % config.export_every):
        export(snap)
    return snap


# ----------------------------------------------------------------------------------------------
# Classifier
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500, tta: bool = True, amp: str = "none"
) -> float:
    """Top-1 accuracy of ``model`` on ``x [N,3,H,W]`` in [0,1]; ``tta`` averages logits with the flip."""
    model.eval()
    dev = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(dev)
        with _autocast(amp, dev):
            logits = model(xb).float()
            if tta:
                logits = logits + model(xb.flip(3)).float()
        correct += (logits.argmax(1).cpu() == y[i : i + batch_size]).sum().item()
    return correct / len(x)


def _diffusion_lr(config: DiffusionTrainConfig, step: int) -> float:
    """Linear warm-up to ``lr``; then constant, or cosine decay to ``lr_min`` at ``config.steps``."""
    if step < config.warmup:
        return config.lr * (step + 1) / max(1, config.warmup)
    if config.lr_schedule == "constant":
        return config.lr
    frac = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    return config.lr_min + 0.5 * (config.lr - config.lr_min) * (1.0 + math.cos(math.pi * frac))


def _load_initial_weights(model: nn.Module, init_from: str, kind: str, arch: str) -> None:
    """Load the weights named by ``init_from`` (bundled name or ``.safetensors`` path) into ``model``."""
    from freqpure.models.bundled import BUNDLED, build_from_file, weights_path

    path = weights_path(init_from) if init_from in BUNDLED else Path(init_from)
    net, meta = build_from_file(path, kind=kind, arch=arch)
    try:
        model.load_state_dict(net.state_dict(), strict=True)
    except RuntimeError as err:
        raise UsageError(
            f"init_from {path}: its weights ({meta['freqpure_config']}) do not fit the model: {err}"
        ) from None


def _load_initial_classifier(model: nn.Module, config: ClassifierTrainConfig) -> None:
    """Load the weights named by ``config.init_from`` (bundled name or path) into ``model``.

    The file must hold a classifier of ``config.arch`` whose tensors fit ``model`` exactly.
    """
    from freqpure.models.bundled import BUNDLED, build_from_file, weights_path

    path = weights_path(config.init_from) if config.init_from in BUNDLED else Path(config.init_from)
    net, meta = build_from_file(path, kind="classifier", arch=config.arch)
    try:
        model.load_state_dict(net.state_dict(), strict=True)
    except RuntimeError as err:
        raise UsageError(
            f"init_from {path}: its weights ({meta['freqpure_config']}) do not fit model {config.model}: {err}"
        ) from None


def _classifier_lr(config: ClassifierTrainConfig, step: int, total: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup_frac`` of training, then linear decay to 0."""
    w = max(1, int(config.warmup_frac * total))
    if step < w:
        return config.lr * (step + 1) / w
    return config.lr * max(0.0, (total - step) / max(1, total - w))


def export_classifier(ckpt: dict[str, Any], out: Path, **extra: Any) -> Path:
    """Write a classifier checkpoint's weights as a bundled safetensors file."""
    cfg = ckpt["config"]
    meta = _config_metadata(
        "classifier", cfg["arch"], cfg["model"], train_step=ckpt["step"], input_range="[0,1]", **extra
    )
    save_safetensors(ckpt["model"], out, meta)
    return out


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
    """Train (or resume) the classifier; returns the final checkpoint dict.

    Evaluates on the full test split (flip TTA) after each epoch; exports to
    ``<run_dir>/export/<name>.safetensors`` (and ``export_to``) when training completes.
    ``max_train_images`` trains on a prefix of a fixed shuffle (tests only).
    """
    run_dir = Path(run_dir)
    dev = torch.device(device)
    ckpt = _prepare_run_dir(run_dir, config, resume)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = ARCHS[config.arch](**config.model).to(dev).to(memory_format=torch.channels_last)
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=True,
    )
    step = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        _set_rng_state(gen, ckpt["rng"])
        step = int(ckpt["step"])
    elif config.init_from:
        _load_initial_classifier(model, config)
    metrics = _Metrics(run_dir / "metrics.jsonl", step)

    x_tr, y_tr = load_cifar10("train", config.data_dir)
    purified = None
    if config.purified_data:
        if not 0.0 < config.purified_frac <= 1.0:
            raise UsageError(f"purified_frac must be in (0, 1], got {config.purified_frac}")
        from freqpure.purified_data import load_purified

        x_pur, purified_info = load_purified(config.purified_data, expect_labels=np.asarray(y_tr))
    if max_train_images is not None:
        keep = np.sort(np.random.Generator(np.random.PCG64(config.seed)).permutation(len(y_tr))[:max_train_images])
        x_tr, y_tr = x_tr[keep], y_tr[keep]
        if config.purified_data:
            x_pur = x_pur[keep]
    data = torch.from_numpy(np.ascontiguousarray(x_tr.transpose(0, 3, 1, 2)))
    if config.purified_data:
        purified = torch.from_numpy(np.ascontiguousarray(x_pur.transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(np.array(y_tr, dtype=np.int64))
    x_te, y_te = load_cifar10("test", config.data_dir)
    x_test = torch.from_numpy(x_te.transpose(0, 3, 1, 2).copy()).float().div_(255)
    y_test = torch.from_numpy(np.array(y_te, dtype=np.int64))

    per_epoch = len(data) // config.batch_size
    total = config.epochs * per_epoch

    def save() -> dict[str, Any]:
        snap = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "rng": _rng_state(gen),
            "config": asdict(config),
            "time": time.time(),
        }
        _atomic_torch_save(snap, run_dir / CHECKPOINT)
        return snap

    end = min(total, stop_after) if stop_after is not None else total
    window = _LossWindow(config.batch_size)
    acc = None
    bar = tqdm(
        total=end,
        initial=step,
        disable=not progress,
        desc=config.name,
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )
    with _StopFlag() as flag:
        batches = _batches(config.seed, len(data), config.batch_size, step)
        model.train()
        while step < end and not flag.stop:
            _, idx = next(batches)
            xb = data[idx]
            if purified is not None:
                swap = torch.rand(len(idx), generator=gen) < config.purified_frac
                xb = torch.where(swap[:, None, None, None], purified[idx], xb)
            xb = xb.to(dev).float().div_(255)
            xb = augment_batch(xb, gen, hflip=True, translate=config.translate)
            xb = xb.contiguous(memory_format=torch.channels_last)
            lr = _classifier_lr(config, step, total)
            for group in opt.param_groups:
                group["lr"] = lr
            with _autocast(config.amp, dev):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), labels[idx].to(dev), label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            window.add(loss.item())
            bar.update(1)
            if step % config.log_every == 0 or step == end:
                window.flush(metrics, bar, step, lr, epoch=step / per_epoch)
            if step % per_epoch == 0 and config.eval_every_epoch:
                acc = evaluate_classifier(model, x_test, y_test, tta=config.tta, amp=config.amp)
                metrics.write(step=step, epoch=step // per_epoch, test_acc=acc, tta=config.tta)
                bar.write(f"epoch {step // per_epoch}: test accuracy {acc:.4f}")
                model.train()
                window.since = time.time()  # evaluation time is not training throughput
            if step % config.ckpt_every == 0:
                save()
    bar.close()
    snap = save()
    if step >= total:
        acc32 = evaluate_classifier(model, x_test, y_test, tta=config.tta, amp="none")
        acc_plain = evaluate_classifier(model, x_test, y_test, tta=False, amp="none")
        metrics.write(step=step, final_test_acc=acc32, final_test_acc_no_tta=acc_plain, tta=config.tta)
        extra: dict[str, Any] = {"test_accuracy_no_tta": round(acc_plain, 4), "test_accuracy_flip_tta": round(acc32, 4)}
        if config.init_from:
            extra["init_from"] = config.init_from
        if config.purified_data:
            extra["purified_data"] = json.dumps(purified_info, sort_keys=True)
            extra["purified_frac"] = config.purified_frac
        targets = [run_dir / "export" / f"{config.name}.safetensors"]
        if export_to:
            targets.append(Path(export_to))
        for out in targets:
            export_classifier(snap, out, **extra)
    return snap


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Export the latest checkpoint of a run (diffusion: EMA weights) to a bundled safetensors file."""
    ckpt_path = Path(run_dir) / CHECKPOINT
    if not ckpt_path.exists():
        raise NotFoundError(f"no checkpoint at {ckpt_path}")
    ckpt = load_checkpoint(ckpt_path)
    if "ema" in ckpt:
        return export_diffusion(ckpt, Path(out))
    extra: dict[str, Any] = {}
    metrics = Path(run_dir) / "metrics.jsonl"
    if metrics.exists():  # carry the final accuracy into the metadata when the run has finished
        for line in metrics.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if "final_test_acc" in row and row["step"] == ckpt["step"]:
                extra = {
                    "test_accuracy_no_tta": round(row["final_test_acc_no_tta"], 4),
                    "test_accuracy_flip_tta": round(row["final_test_acc"], 4),
                }
    return export_classifier(ckpt, Path(out), **extra)


# ----------------------------------------------------------------------------------------------
# Run summaries
# ----------------------------------------------------------------------------------------------
def _rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise NotFoundError(f"no metrics.jsonl in {run_dir}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Key numbers of a run from its ``metrics.jsonl``: step, training wall time, recent loss, evals.

    ``train_step_hours`` sums the logged training intervals: evaluation time and pauses between a
    kill and a resume do not count.
    """
    run_dir = Path(run_dir)
    rows = _rows(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    loss_rows = [r for r in rows if "loss" in r]
    step = max((r["step"] for r in rows), default=0)
    seconds, prev = 0.0, 0
    for r in loss_rows:
        seconds += (r["step"] - prev) * cfg.get("batch_size", 1) / max(r["images_per_s"], 1e-9)
        prev = r["step"]
    recent = loss_rows[-10:]
    out: dict[str, Any] = {
        "run": str(run_dir),
        "step": step,
        "train_step_hours": round(seconds / 3600, 3),  # logged training steps only, no evals
        "images_per_s_recent": round(sum(r["images_per_s"] for r in recent) / max(1, len(recent)), 1),
        "loss_recent": round(sum(r["loss"] for r in recent) / max(1, len(recent)), 5),
    }
    evals = [r for r in rows if any(k.startswith(("test_acc", "eval_", "final_")) for k in r)]
    if evals:
        out["evals"] = [{k: v for k, v in r.items() if k != "time"} for r in evals]
    return out


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Save a small PNG of the loss curve (and test accuracy / denoising MSE) of a run (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = _rows(run_dir)
    loss = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    acc = [(r["step"], r["test_acc"]) for r in rows if "test_acc" in r]
    mse = [(r["step"], r["eval_denoise_mse_t100"]) for r in rows if "eval_denoise_mse_t100" in r]
    fig, ax = plt.subplots(1, 2, figsize=(8, 3), dpi=80)
    ax[0].plot(*zip(*loss), lw=0.8)
    ax[0].set(xlabel="step", ylabel="training loss", yscale="log", title=run_dir.name)
    if acc:
        ax[1].plot(*zip(*acc), marker="o")
        ax[1].set(xlabel="step", ylabel="test accuracy (flip TTA)")
    elif mse:
        ax[1].plot(*zip(*mse), marker="o")
        ax[1].set(xlabel="step", ylabel="EMA x0 MSE at t=100 (256 test images)", yscale="log")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
