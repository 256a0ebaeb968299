"""Architecture table: how to build each published network family and expose it to freqpure.

An :class:`Arch` knows how to build the raw network from JSON-able constructor kwargs, whether it is
a diffusion model or a classifier, how to wrap it (:class:`~freqpure.models.adapters.EpsModel`
settings for diffusion nets; [0, 1]-input preprocessing for classifiers), and how to pull its
state_dict out of a published checkpoint file.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from freqpure.models.adapters import EpsModel
from freqpure.models.checkpoint import ArchitectureMismatchError, find_state_dict

__all__ = ["ARCHS", "Arch", "wrap_classifier", "wrap_diffusion"]


def _build_ncsnpp(config: Mapping[str, Any]) -> nn.Module:
    from freqpure.models.ncsnpp import build_ncsnpp

    return build_ncsnpp(config)


def _build_adm(config: Mapping[str, Any]) -> nn.Module:
    from freqpure.models.adm import build_adm

    return build_adm(config)


def _build_wrn(config: Mapping[str, Any]) -> nn.Module:
    from freqpure.models.wrn import WideResNet

    return WideResNet(**config)


def _build_resnet50(config: Mapping[str, Any]) -> nn.Module:
    from freqpure.models.resnet import resnet50

    return resnet50(**config)


def _build_dm_wrn(config: Mapping[str, Any]) -> nn.Module:
    from freqpure.models.dm_wrn import DMWideResNet

    return DMWideResNet(**config)


def _ncsnpp_eps(config: Mapping[str, Any]) -> dict[str, Any]:
    return {"image_size": config.get("image_size", 32), "channels": config.get("num_channels", 3),
            "learn_sigma": False, "time_scale": 1.0}


def _adm_eps(config: Mapping[str, Any]) -> dict[str, Any]:
    in_ch = config.get("in_channels", 3)
    return {"image_size": config.get("image_size"), "channels": in_ch,
            "learn_sigma": config.get("out_channels", in_ch) == 2 * in_ch, "time_scale": 1.0}


def generic_state_dict(obj: Any, model: nn.Module, config: Mapping[str, Any]) -> dict[str, Tensor]:
    """Bare state_dict or one wrapped in ``state_dict`` / ``model_state_dict`` / ``model``."""
    return find_state_dict(obj)


def score_sde_state_dict(obj: Any, model: nn.Module, config: Mapping[str, Any]) -> dict[str, Tensor]:
    """score_sde checkpoint → inference state_dict: EMA ``shadow_params`` matched by position.

    ``shadow_params[i]`` goes to the i-th parameter of ``model.parameters()`` (what
    ``ExponentialMovingAverage.copy_to`` does); ``sigmas`` is rebuilt from the config. A file
    without ``ema`` is read as a plain state_dict.
    """
    from freqpure.models.ncsnpp import ncsnpp_sigmas

    if not (isinstance(obj, Mapping) and isinstance(obj.get("ema"), Mapping)):
        if isinstance(obj, Mapping) and "model" in obj and "optimizer" in obj:
            warnings.warn("score_sde checkpoint without 'ema': using the raw (non-EMA) training weights",
                          stacklevel=3)
        return find_state_dict(obj)
    shadow = obj["ema"].get("shadow_params")
    if not isinstance(shadow, list | tuple):
        raise ArchitectureMismatchError("checkpoint 'ema' has no 'shadow_params' list")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if len(shadow) != len(params):
        raise ArchitectureMismatchError(
            f"EMA has {len(shadow)} shadow params but the architecture has {len(params)} parameters"
        )
    bad = [f"#{i} {n}: file {list(s.shape)} vs model {list(p.shape)}"
           for i, ((n, p), s) in enumerate(zip(params, shadow)) if tuple(s.shape) != tuple(p.shape)]
    if bad:
        raise ArchitectureMismatchError(
            f"EMA shadow params do not match the architecture by position ({len(bad)} shape mismatches): "
            + ", ".join(bad[:5])
        )
    sd = {n: s for (n, _), s in zip(params, shadow)}
    sd["sigmas"] = ncsnpp_sigmas(config.get("sigma_min", 0.01), config.get("sigma_max", 50.0),
                                 config.get("num_scales", 1000))
    return sd


@dataclass(frozen=True)
class Arch:
    """One network family. ``meta_init``: safe to build on the ``meta`` device and load by assignment."""

    name: str
    kind: str  # "diffusion" | "classifier"
    build: Callable[[Mapping[str, Any]], nn.Module]
    description: str
    meta_init: bool = False
    eps_kwargs: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    preprocess: Mapping[str, Any] = field(default_factory=dict)  # classifier default preprocessing
    extract: Callable[[Any, nn.Module, Mapping[str, Any]], dict[str, Tensor]] = generic_state_dict


_IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": 224}

ARCHS: dict[str, Arch] = {
    a.name: a
    for a in [
        Arch("ncsnpp", "diffusion", _build_ncsnpp, "score_sde NCSN++/DDPM++ (freqpure.models.ncsnpp.NCSNpp)",
             meta_init=True, eps_kwargs=_ncsnpp_eps, extract=score_sde_state_dict),
        Arch("adm", "diffusion", _build_adm, "guided-diffusion ADM U-Net (freqpure.models.adm.ADMUNet)",
             meta_init=True, eps_kwargs=_adm_eps),
        Arch("wrn", "classifier", _build_wrn, "RobustBench WideResNet (freqpure.models.wrn.WideResNet)"),
        Arch("resnet50", "classifier", _build_resnet50, "torchvision ResNet-50 (freqpure.models.resnet)",
             preprocess=_IMAGENET),
        Arch("dm_wrn", "classifier", _build_dm_wrn,
             "RobustBench DMWideResNet (freqpure.models.dm_wrn.DMWideResNet; unverified)"),
    ]
}


def wrap_diffusion(net: nn.Module, eps_kwargs: Mapping[str, Any], name: str) -> EpsModel:
    """Raw diffusion network → :class:`EpsModel` (already-wrapped models pass through)."""
    if isinstance(net, EpsModel):
        return net
    return EpsModel(net, name=name, **eps_kwargs)


def wrap_classifier(net: nn.Module, preprocess: Mapping[str, Any]) -> nn.Module:
    """Raw classifier → module taking [0, 1] images (mean/std normalisation, optional resize)."""
    if not preprocess or "mean" not in preprocess:
        return net
    from freqpure.models._wrappers import NormalizedClassifier

    return NormalizedClassifier(net, preprocess["mean"], preprocess["std"], preprocess.get("resize"))
