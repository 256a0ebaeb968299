"""Building what an evaluation needs from its config: the images, the models, the defence, the attack models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from freqpure.attacks.gradients import AttackModel, attack_purifier
from freqpure.config.purifier import build_purifier
from freqpure.errors import UsageError
from freqpure.evaluation.config import AttackConfig, DataConfig, EvalConfig
from freqpure.purifiers import PurifiedClassifier
from freqpure.runtime import Autocast, resolve_precision
from freqpure.transforms import Resize, imagenet_classifier_input

__all__ = ["EvalData", "Defence", "load_eval_data", "load_models", "build_defence"]


@dataclass
class EvalData:
    """The evaluation subset: ``indices`` into the split, ``labels`` int64 ``[n]``, ``class_names``,
    and ``images(positions)`` → float ``[k, 3, H, W]`` in [0, 1] (decoded lazily for ImageNet)."""

    indices: np.ndarray
    labels: Tensor
    class_names: list[str]
    images: Callable[[list[int]], Tensor]
    source: str


def load_eval_data(cfg: DataConfig) -> EvalData:
    """The deterministic class-balanced subset described by ``cfg`` (see :mod:`freqpure.data`)."""
    from freqpure import data

    if cfg.dataset == "cifar10":
        sub = data.eval_subset(cfg.n, cfg.subset_seed, split=cfg.split, data_dir=cfg.data_dir)
        folder = data.find_cifar10_dir(cfg.data_dir, cfg.split)
        return EvalData(np.asarray(sub.indices), sub.y, list(data.CIFAR10_CLASSES),
                        lambda pos: sub.x[pos], f"cifar10/{cfg.split} at {folder}")
    if not cfg.data_dir:
        raise UsageError("data.dataset=imagenet needs data.data_dir (an ImageFolder of the validation set)")
    ds = data.imagenet_val(cfg.data_dir, resize=cfg.image_size, crop=cfg.image_size)
    idx = data.eval_subset_indices(ds.labels, cfg.n, cfg.subset_seed)
    labels = torch.as_tensor(ds.labels[idx], dtype=torch.int64)
    return EvalData(idx, labels, list(ds.classes), lambda pos: data.stack_dataset(ds, idx[pos])[0],
                    f"imagenet val at {cfg.data_dir}")


def load_models(cfg: EvalConfig, device: torch.device) -> tuple[nn.Module, nn.Module | None]:
    """(classifier, ε-model or ``None``) from the registry, in eval mode with frozen parameters."""
    import freqpure

    classifier = freqpure.load_classifier(cfg.classifier.name, device=device)
    eps_model = None
    if cfg.purifier.method != "none":
        eps_model = freqpure.load_diffusion(cfg.purifier.diffusion, device=device)
    for m in (classifier, eps_model):
        if m is not None:
            m.eval().requires_grad_(False)
    return classifier, eps_model


class _Plain(nn.Module):
    """The undefended classifier with the optional classifier-input transform; ``noise`` is ignored."""

    stochastic = False

    def __init__(self, classifier: nn.Module, post: nn.Module | None) -> None:
        super().__init__()
        self.classifier, self.post = classifier, post

    def forward(self, x: Tensor, noise=None) -> Tensor:
        return self.classifier(self.post(x) if self.post is not None else x)


@dataclass
class Defence:
    """The defended model and its parts.

    ``model(x, noise) -> scores [B, K]`` is what judges (argmax = prediction); ``purifier`` is ``None``
    for ``method: none``; ``pre``/``post`` are the transforms around the purifier.
    """

    model: nn.Module
    classifier: nn.Module
    purifier: nn.Module | None
    pre: nn.Module | None
    post: nn.Module | None
    ensemble: int
    vote: str
    max_batch: int | None

    @torch.no_grad()
    def predict(self, x: Tensor, noise) -> Tensor:
        """Predicted labels ``[B]`` (one-shot: one call with ``noise``, ensemble vote included)."""
        return self.model(x, noise).argmax(1)

    @torch.no_grad()
    def purify_once(self, x: Tensor, noise) -> Tensor:
        """One purification of ``x`` (the image itself without a purifier), clipped to [0, 1] for display."""
        if self.purifier is None:
            return x.clone()
        if self.pre is not None:
            x = self.pre(x)
        return self.purifier(x, noise=noise).clamp(0, 1)

    def attack_purifier(self, attack: AttackConfig) -> nn.Module:
        """The purifier in the attack's gradient mode (see :func:`freqpure.attacks.attack_purifier`)."""
        return attack_purifier(self.purifier, attack.gradient, attack.surrogate_rounds,
                               surrogate_match=attack.surrogate_match)

    def attack_model(self, attack: AttackConfig) -> AttackModel:
        """What PGD differentiates: classifier ∘ (purifier in the attack's gradient mode), one draw per call."""
        if self.purifier is None:
            return AttackModel(self.classifier, None, postprocess=self.post)
        return AttackModel(self.classifier, self.attack_purifier(attack), preprocess=self.pre, postprocess=self.post)

    def mean_softmax_model(self, attack: AttackConfig, draws: int = 1) -> PurifiedClassifier:
        """The defence's smooth score for attack libraries: ``model(x, noise)`` → log of the mean softmax
        over ``ensemble × draws`` purifications (purifier in the attack's gradient mode), ``[B, K]``.

        Unlike :attr:`model` (majority vote: piecewise-constant vote shares), its value and gradient are
        those of the defence's mean softmax, and one call is already the EOT average over ``draws``."""
        if self.purifier is None:
            raise UsageError("mean_softmax_model needs a purifier (method none is deterministic)")
        return PurifiedClassifier(self.classifier, self.attack_purifier(attack), self.ensemble * draws, "softmax",
                                  preprocess=self.pre, postprocess=self.post, max_batch=self.max_batch)


def build_defence(cfg: EvalConfig, classifier: nn.Module, eps_model: nn.Module | None) -> Defence:
    """The defended classifier described by ``cfg.purifier`` and ``cfg.defence``."""
    d = cfg.defence
    post = imagenet_classifier_input(224) if d.classifier_input == "imagenet224" else None
    pre = Resize(d.purify_size) if d.purify_size else None
    purifier = build_purifier(cfg.purifier, eps_model, seed=cfg.seed) if cfg.purifier.method != "none" else None
    if resolve_precision(cfg.purifier.precision) != "fp32":  # one key for both networks (see PurifierConfig)
        classifier = Autocast(classifier, cfg.purifier.precision)
    if purifier is None:
        model: nn.Module = _Plain(classifier, post)
    else:
        model = PurifiedClassifier(classifier, purifier, d.ensemble, d.vote, preprocess=pre, postprocess=post,
                                   max_batch=d.max_batch)
    return Defence(model, classifier, purifier, pre, post, d.ensemble, d.vote, d.max_batch)
