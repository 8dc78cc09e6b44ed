"""The protected classifiers: logits from (N, C, H, W) images in [0, 1]."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

ClassifierKind = Literal["lenet5", "vgg"]

# Conv widths of the VGG-style net for 3×32×32; "M" is a 2×2 max pool.
VGG_LAYOUT: tuple[int | str, ...] = (16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M")


@dataclass(frozen=True)
class ClassifierConfig:
    kind: ClassifierKind = "lenet5"
    channels: int = 1
    num_classes: int = 10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierConfig:
        return cls(kind=d["kind"], channels=int(d["channels"]), num_classes=int(d["num_classes"]))


class LeNet5(nn.Module):
    """The LeNet-5 variant for 1×28×28 (key names as in the reference implementation)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(256, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool(self.relu(self.conv1(x)))  # (N, 6, 12, 12)
        h = self.pool(self.relu(self.conv2(h)))  # (N, 16, 4, 4)
        h = torch.flatten(h, 1)  # (N, 256)
        h = self.relu(self.fc1(h))
        h = self.relu(self.fc2(h))
        logits: Tensor = self.fc3(h)  # (N, classes)
        return logits


class VGGNet(nn.Module):
    """A VGG-style net for 3×32×32: 3×3 conv + BN + ReLU stages, then one linear layer."""

    def __init__(self, channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = channels
        for item in VGG_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                assert isinstance(item, int)
                layers += [nn.Conv2d(width, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
                width = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)  # (N, 128, 1, 1) for 32×32 inputs
        logits: Tensor = self.classifier(torch.flatten(h, 1))  # (N, classes)
        return logits


def build_classifier(config: ClassifierConfig) -> nn.Module:
    if config.kind == "lenet5":
        if config.channels != 1:
            raise ValueError("the LeNet-5 classifier takes 1-channel 28×28 images")
        return LeNet5(config.num_classes)
    if config.kind == "vgg":
        return VGGNet(config.channels, config.num_classes)
    raise ValueError(f"unknown classifier kind {config.kind!r}: expected 'lenet5' or 'vgg'")
