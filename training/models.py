"""The model registry: a small CNN for product crops and a ResNet-18, both with GroupNorm (no running statistics)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

# Both networks normalise with GroupNorm rather than BatchNorm: BatchNorm's running statistics are buffers that
# participants would have to average (and num_batches_tracked is an integer), and its per-batch statistics behave
# badly on the small, skewed shards of federated training (Hsieh et al. 2020, "The Non-IID Data Quagmire"). With
# GroupNorm every entry of a state dict is a float parameter, so an update is simply the difference of two states.


def _groups(channels: int) -> int:
    return min(8, channels // 2)


class SmallCNN(nn.Module):
    """Three conv blocks (16-32-64 channels, GroupNorm, ReLU, 2× pooling), global average pooling, one linear layer.

    About 24 k parameters (96 KB as float32); meant for 32² product crops, but any image size ≥ 8 works (the
    pooling is global). Small on purpose: a training step at 32², batch 32, takes ~20 ms on one CPU core.
    """

    def __init__(self, num_classes: int, image_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in (16, 32, 64):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.GroupNorm(_groups(width), width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits [N, num_classes] of normalised images [N, 3, S, S]."""
        out: Tensor = self.classifier(torch.flatten(self.pool(self.features(x)), 1))
        return out


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.GroupNorm(_groups(cout), cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        result: Tensor = self.relu(out + self.shortcut(x))
        return result


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016: 4 stages × 2 basic blocks, 64-128-256-512 channels), GroupNorm for BatchNorm.

    About 11.2 M parameters. Images up to 64² get the CIFAR-style stem (3×3 conv, stride 1, no max-pool) so that
    small crops are not pooled away; larger images get the ImageNet stem (7×7 conv, stride 2, 3×3 max-pool).
    """

    def __init__(self, num_classes: int, image_size: int) -> None:
        super().__init__()
        if image_size <= 64:
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.GroupNorm(_groups(64), 64), nn.ReLU(inplace=True)
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
                nn.GroupNorm(_groups(64), 64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        blocks: list[nn.Module] = []
        channels = 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [_BasicBlock(channels, width, stride), _BasicBlock(width, width, 1)]
            channels = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits [N, num_classes] of normalised images [N, 3, S, S]."""
        out: Tensor = self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))
        return out


MODELS: dict[str, Callable[[int, int], nn.Module]] = {"smallcnn": SmallCNN, "resnet18": ResNet18}
MIN_IMAGE_SIZE = 8
MAX_IMAGE_SIZE = 1024


def build(name: str, num_classes: int, image_size: int) -> nn.Module:
    """A freshly initialised network from the registry (unknown name → ValueError naming the choices)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be within {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}, got {image_size}")
    return MODELS[name](num_classes, image_size)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
