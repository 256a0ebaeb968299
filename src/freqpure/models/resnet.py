"""ResNet-50 in torchvision's layout (Bottleneck v1.5), for torchvision's ImageNet weight files.

Uses ``torchvision.models.resnet50`` when torchvision is installed, otherwise an equivalent module
with identical parameter names, shapes and order (so ``resnet50-11ad3fa6.pth`` / ``resnet50-0676ba61.pth``
load with ``strict=True`` either way).

Forward of the raw network: ``net(x [B, 3, H, W] ImageNet-normalised) -> logits [B, 1000]``.
:func:`imagenet_classifier` wraps it to take [0, 1] images.
"""

from __future__ import annotations

import importlib.util

from torch import Tensor, nn

from freqpure.models._wrappers import IMAGENET_MEAN, IMAGENET_STD, NormalizedClassifier

__all__ = ["ResNet", "build_resnet50", "imagenet_classifier", "resnet50"]


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided) → 1×1 ×4 bottleneck with a projection shortcut when shapes change."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(h + shortcut)


class ResNet(nn.Module):
    """Bottleneck ResNet with torchvision's attribute names (``conv1``, ``bn1``, ``layer1..4``, ``fc``)."""

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 6, 3), num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], 1)
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [Bottleneck(self.inplanes, planes, stride)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [B, 3, H, W] ImageNet-normalised → logits [B, num_classes]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet50(num_classes: int = 1000, *, use_torchvision: bool | None = None) -> nn.Module:
    """A randomly initialised ResNet-50; torchvision's own when available (``use_torchvision=None``)."""
    if use_torchvision is None:
        use_torchvision = importlib.util.find_spec("torchvision") is not None
    if use_torchvision:
        from torchvision.models import resnet50 as tv_resnet50

        return tv_resnet50(weights=None, num_classes=num_classes)
    return ResNet((3, 4, 6, 3), num_classes)


def build_resnet50(config: dict) -> nn.Module:
    """Build from ``{'num_classes': ..., 'use_torchvision': ...}`` (both optional)."""
    return resnet50(**config)


def imagenet_classifier(net: nn.Module, input_size: int | None = 224) -> NormalizedClassifier:
    """Wrap a raw ImageNet network to take [0, 1] images (resize to ``input_size``, mean/std)."""
    return NormalizedClassifier(net, IMAGENET_MEAN, IMAGENET_STD, input_size=input_size)
