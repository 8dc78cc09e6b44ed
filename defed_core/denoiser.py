"""The Defed denoiser: a small U-Net of edge-feature-enhancement (EFE) blocks.

Module names follow the reference implementation, so its state dicts load unchanged
(see `defed_core.reference`). The forward pass, for an input x0 with C channels:

    s1 = skip1(x0)                      residual stack C→16→16→16→16→16→C
    h  = head(x0)                       3×3 conv C→16, BN, PReLU
    s2 = skip2(h)                       residual stack of 4 convs at 16
    h  = down1(en_efe_1(h))             2×2/2 conv 16→32, BN, PReLU
    s3 = skip3(h)                       residual stack of 2 convs at 32
    h  = down2(en_efe_2(h))             2×2/2 conv 32→32, BN, PReLU
    h  = de_efe_2(up2(h)) + s3          up: 2×2/2 transposed conv, BN, PReLU
    h  = de_efe_1(up1(h)) + s2
    out = clamp(tail(h) + s1, 0, 1)     tail: transposed 3×3 conv 16→C, BN, PReLU

BaseNet (the ablation) is the same network with neither the blur and edge branches nor the
three skip stacks.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any, Literal

from torch import Tensor, nn

from defed_core.filters import EdgeOperator, GaussianBlur, edge_operator

Architecture = Literal["defed", "basenet"]


@dataclass(frozen=True)
class DenoiserConfig:
    """Everything needed to rebuild a denoiser's modules."""

    channels: int = 1
    edge: EdgeOperator = "laplacian"
    architecture: Architecture = "defed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DenoiserConfig:
        return cls(channels=int(d["channels"]), edge=d["edge"], architecture=d["architecture"])


def conv_bn_prelu(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.PReLU())


class EFEBlock(nn.Module):
    """Three parallel branches (blur, edge, identity), each conv → BN → PReLU, summed, then 1×1.

    Encoder blocks use 3×3 convolutions, decoder blocks stride-1 3×3 transposed convolutions.
    With `edge_features=False` only the identity branch remains (the BaseNet ablation).
    """

    def __init__(self, channels: int, edge: EdgeOperator, *, decoder: bool, edge_features: bool = True) -> None:
        super().__init__()
        conv3x3 = nn.ConvTranspose2d if decoder else nn.Conv2d

        def branch() -> nn.Sequential:
            return conv_bn_prelu(conv3x3(channels, channels, 3, stride=1, padding=1), channels)

        self.edge_features = edge_features
        if edge_features:
            self.blur = GaussianBlur(sigma=1.0)
            self.edge = edge_operator(edge)
            self.blurConv = branch()
            self.edgeConv = branch()
        self.orignConv = branch()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.orignConv(x)
        if self.edge_features:
            out = out + self.blurConv(self.blur(x)) + self.edgeConv(self.edge(x))
        mixed: Tensor = self.conv(out)
        return mixed


class SkipStack(nn.Module):
    """Plain 3×3 convolutions (no activation between them) plus the input: x + convs(x)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, depth: int) -> None:
        super().__init__()
        widths = [in_channels] + [mid_channels] * (depth - 1) + [out_channels]
        self.layers = nn.Sequential(*(nn.Conv2d(a, b, 3, stride=1, padding=1) for a, b in itertools.pairwise(widths)))

    def forward(self, x: Tensor) -> Tensor:
        residual: Tensor = self.layers(x)
        return x + residual


class Denoiser(nn.Module):
    """The Defed denoiser (or the BaseNet ablation): (N, C, H, W) in [0, 1] → same shape.

    H and W must be divisible by 4 (two stride-2 stages).
    """

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        full = config.architecture == "defed"
        edge = config.edge

        self.has_skips = full
        if full:
            self.skip1 = SkipStack(c, 16, c, depth=6)
        self.head = conv_bn_prelu(nn.Conv2d(c, 16, 3, padding=1), 16)
        if full:
            self.skip2 = SkipStack(16, 16, 16, depth=4)
        self.en_efe_1 = EFEBlock(16, edge, decoder=False, edge_features=full)
        self.down1 = conv_bn_prelu(nn.Conv2d(16, 32, 2, stride=2), 32)
        if full:
            self.skip3 = SkipStack(32, 32, 32, depth=2)
        self.en_efe_2 = EFEBlock(32, edge, decoder=False, edge_features=full)
        self.down2 = conv_bn_prelu(nn.Conv2d(32, 32, 2, stride=2), 32)
        self.up2 = conv_bn_prelu(nn.ConvTranspose2d(32, 32, 2, stride=2), 32)
        self.de_efe_2 = EFEBlock(32, edge, decoder=True, edge_features=full)
        self.up1 = conv_bn_prelu(nn.ConvTranspose2d(32, 16, 2, stride=2), 16)
        self.de_efe_1 = EFEBlock(16, edge, decoder=True, edge_features=full)
        self.tail = conv_bn_prelu(nn.ConvTranspose2d(16, c, 3, stride=1, padding=1), c)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"denoiser input H and W must be divisible by 4, got {tuple(x.shape)}")
        h = self.head(x)  # (N, 16, H, W)
        s2 = self.skip2(h) if self.has_skips else None
        h = self.down1(self.en_efe_1(h))  # (N, 32, H/2, W/2)
        s3 = self.skip3(h) if self.has_skips else None
        h = self.down2(self.en_efe_2(h))  # (N, 32, H/4, W/4)
        h = self.de_efe_2(self.up2(h))  # (N, 32, H/2, W/2)
        if s3 is not None:
            h = h + s3
        h = self.de_efe_1(self.up1(h))  # (N, 16, H, W)
        if s2 is not None:
            h = h + s2
        out: Tensor = self.tail(h)  # (N, C, H, W)
        if self.has_skips:
            out = out + self.skip1(x)
        return out.clamp(0.0, 1.0)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_denoiser(config: DenoiserConfig) -> Denoiser:
    return Denoiser(config)
