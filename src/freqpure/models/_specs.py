"""Catalogue of the published checkpoints freqpure knows how to load (data only)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PUBLISHED", "ModelSpec"]


@dataclass(frozen=True)
class ModelSpec:
    """One published model.

    ``files``: accepted file names (or paths relative to the checkpoint directory), in order of
    preference; a converted ``<name>.safetensors`` is always tried first. ``sha256`` holds full
    checksums only where genuinely known (``None`` otherwise); ``sha256_prefix`` holds the checksum
    prefixes that torch.hub-style file names carry (``resnet50-11ad3fa6.pth``).
    """

    name: str
    kind: str  # "diffusion" | "classifier"
    arch: str  # key of freqpure.models._archs.ARCHS
    config: Mapping[str, Any]  # constructor kwargs of the architecture
    files: tuple[str, ...]
    description: str
    source: str  # where to obtain the file (page / instructions)
    urls: tuple[str, ...] = ()  # direct downloads, when there is one
    sha256: Mapping[str, str | None] = field(default_factory=dict)
    sha256_prefix: Mapping[str, str] = field(default_factory=dict)
    preprocessing: str = ""
    expected_clean_accuracy: float | None = None  # percent, on the model's test set
    accuracy_note: str = ""
    verified: str = ""
    t_max: int = 1000  # diffusion models: trained on step indices 0..t_max-1 (all published ones: 1000)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able description (for listings and manifests)."""
        return {
            "name": self.name, "kind": self.kind, "arch": self.arch, "config": dict(self.config),
            "files": list(self.files), "description": self.description, "source": self.source,
            "urls": list(self.urls), "sha256": dict(self.sha256), "sha256_prefix": dict(self.sha256_prefix),
            "preprocessing": self.preprocessing, "expected_clean_accuracy": self.expected_clean_accuracy,
            "accuracy_note": self.accuracy_note, "verified": self.verified,
            **({"t_max": self.t_max} if self.kind == "diffusion" else {}),
        }


NCSNPP_CIFAR10_CONFIG: dict[str, Any] = {
    "image_size": 32, "num_channels": 3, "centered": True, "nf": 128, "ch_mult": [1, 2, 2, 2],
    "num_res_blocks": 8, "attn_resolutions": [16], "dropout": 0.1, "conditional": True,
    "skip_rescale": True, "init_scale": 0.0, "sigma_min": 0.01, "sigma_max": 50, "num_scales": 1000,
    "scale_by_sigma": False,
}

ADM_IMAGENET256_UNCOND_CONFIG: dict[str, Any] = {
    "image_size": 256, "in_channels": 3, "model_channels": 256, "out_channels": 6, "num_res_blocks": 2,
    "attention_resolutions": [8, 16, 32], "dropout": 0.0, "channel_mult": [1, 1, 2, 2, 4, 4],
    "conv_resample": True, "dims": 2, "num_classes": None, "use_checkpoint": False, "use_fp16": False,
    "num_heads": 4, "num_head_channels": 64, "num_heads_upsample": -1, "use_scale_shift_norm": True,
    "resblock_updown": True, "use_new_attention_order": False,
}

WRN_28_10_CONFIG: dict[str, Any] = {
    "depth": 28, "widen_factor": 10, "num_classes": 10, "sub_block1": False, "dropRate": 0.0, "bias_last": True,
}

RESNET50_CONFIG: dict[str, Any] = {"num_classes": 1000}

DM_WRN_70_16_CONFIG: dict[str, Any] = {"num_classes": 10, "depth": 70, "width": 16, "activation": "swish"}

_FIXTURE_NOTE = ("structure verified against the published configuration's manifest (names, shapes, order, "
                 "buffers, parameter count); function verified on a reduced configuration with known weights")

PUBLISHED: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            name="diffpure-cifar10-ncsnpp",
            kind="diffusion",
            arch="ncsnpp",
            config=NCSNPP_CIFAR10_CONFIG,
            files=("checkpoint_8.pth", "score_sde/checkpoint_8.pth",
                   "vp/cifar10_ddpmpp_deep_continuous/checkpoint_8.pth"),
            description="score_sde DDPM++ (NCSN++ code, deep, continuous VP-SDE) CIFAR-10 32x32 score model "
                        "used by DiffPure and FreqPure; EMA weights; 106.6M parameters",
            source="score_sde_pytorch pretrained checkpoints (github.com/yang-song/score_sde_pytorch, README "
                   "'Pretrained checkpoints' -> vp/cifar10_ddpmpp_deep_continuous/checkpoint_8.pth); DiffPure's "
                   "README (github.com/NVlabs/DiffPure) points to the same file (pretrained/score_sde/)",
            preprocessing="diffusion space: images in [-1, 1] (x = 2*x01 - 1); t = discrete step index 0..999 "
                          "(label t*999 in continuous VP time); output is epsilon",
            accuracy_note="diffusion model: no clean accuracy of its own",
            verified=_FIXTURE_NOTE + "; EMA-by-position mapping verified on the reduced fixture",
        ),
        ModelSpec(
            name="guided-diffusion-imagenet256-uncond",
            kind="diffusion",
            arch="adm",
            config=ADM_IMAGENET256_UNCOND_CONFIG,
            files=("256x256_diffusion_uncond.pt", "guided_diffusion/256x256_diffusion_uncond.pt"),
            description="OpenAI guided-diffusion ADM U-Net, ImageNet 256x256 unconditional, learned sigma "
                        "(6 output channels); 552.8M parameters",
            source="OpenAI guided-diffusion (github.com/openai/guided-diffusion, README 'Download pre-trained "
                   "models')",
            urls=("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",),
            preprocessing="diffusion space: images in [-1, 1] at 256x256; t = discrete step index 0..999; "
                          "output channels 0-2 epsilon, 3-5 learned variance values",
            accuracy_note="diffusion model: no clean accuracy of its own",
            verified=_FIXTURE_NOTE,
        ),
        ModelSpec(
            name="robustbench-cifar10-standard",
            kind="classifier",
            arch="wrn",
            config=WRN_28_10_CONFIG,
            files=("Standard.pt", "cifar10/Linf/Standard.pt"),
            description="RobustBench CIFAR-10 'Standard' WideResNet-28-10 (not adversarially trained); "
                        "36.5M parameters",
            source="RobustBench model zoo (github.com/RobustBench/robustbench): "
                   "robustbench.utils.load_model('Standard', dataset='cifar10', threat_model='Linf', "
                   "model_dir=DIR) downloads DIR/cifar10/Linf/Standard.pt",
            preprocessing="inputs [B,3,32,32] in [0, 1]; no normalisation",
            expected_clean_accuracy=94.78,
            accuracy_note="RobustBench leaderboard clean accuracy on the CIFAR-10 test set",
            verified=_FIXTURE_NOTE,
        ),
        ModelSpec(
            name="torchvision-resnet50",
            kind="classifier",
            arch="resnet50",
            config=RESNET50_CONFIG,
            files=("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"),
            description="torchvision ResNet-50 ImageNet weights: IMAGENET1K_V2 (FreqPure) or IMAGENET1K_V1 "
                        "(DiffPure); 25.6M parameters",
            source="torchvision model weights (pytorch.org/vision/stable/models/generated/"
                   "torchvision.models.resnet50.html); torch.hub caches them in ~/.cache/torch/hub/checkpoints",
            urls=("https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
                  "https://download.pytorch.org/models/resnet50-0676ba61.pth"),
            sha256={"resnet50-11ad3fa6.pth": None, "resnet50-0676ba61.pth": None},
            sha256_prefix={"resnet50-11ad3fa6.pth": "11ad3fa6", "resnet50-0676ba61.pth": "0676ba61"},
            preprocessing="inputs [B,3,H,W] in [0, 1]; bilinear resize to 224x224 when the size differs "
                          "(as FreqPure does), then ImageNet mean/std normalisation inside the wrapper",
            expected_clean_accuracy=80.858,
            accuracy_note="torchvision's documented ImageNet top-1 for IMAGENET1K_V2 (V1 file: 76.130); "
                          "measured with torchvision's own resize/crop transforms",
            verified="structure verified against the manifest (names, shapes, order, buffers, parameter "
                     "count); no numeric fixture",
        ),
        ModelSpec(
            name="freqpure-cifar10-wrn70-16",
            kind="classifier",
            arch="dm_wrn",
            config=DM_WRN_70_16_CONFIG,
            files=("weights-best.pt", "wresnet-70-16/weights-best.pt", "cifar10/wresnet-70-16/weights-best.pt"),
            description="WideResNet-70-16 (RobustBench DMWideResNet, swish) CIFAR-10 classifier loaded by the "
                        "official FreqPure/DiffPure code; keys prefixed 'module.0.'; 266.8M parameters",
            source="the WRN-70-16 classifier checkpoint referenced by the DiffPure and FreqPure READMEs "
                   "(github.com/NVlabs/DiffPure, github.com/GaozhengPei/FreqPure)",
            preprocessing="inputs [B,3,32,32] in [0, 1]; CIFAR-10 mean/std normalisation inside the network",
            accuracy_note="unknown here; not measured",
            verified="UNVERIFIED: no fixture or manifest; architecture written from the description of "
                     "RobustBench's dm_wide_resnet module",
        ),
    ]
}
