"""The fixed (untrained) filters of the edge-feature-enhancement block.

Each filter acts on every channel separately (a depthwise convolution), keeps the spatial
size, and has no parameters: its kernel is a non-persistent buffer, so state dicts (and the
reference code's checkpoints) carry no entry for it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EdgeOperator = Literal["laplacian", "sobel"]


def gaussian_kernel(sigma: float = 1.0) -> Tensor:
    """The normalised 3×3 Gaussian kernel (outer product of the 1-D kernel)."""
    g = torch.tensor([math.exp(-1 / (2 * sigma**2)), 1.0, math.exp(-1 / (2 * sigma**2))])
    g = g / g.sum()
    return torch.outer(g, g)  # (3, 3)


def laplacian_kernel() -> Tensor:
    """The unnormalised 3×3 Laplacian: all ones with −8 at the centre."""
    k = torch.ones(3, 3)
    k[1, 1] = -8.0
    return k


def sobel_kernels() -> Tensor:
    """The unnormalised Sobel pair, d/dx then d/dy: shape (2, 3, 3)."""
    gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    return torch.stack([gx, gx.t()])


def depthwise(x: Tensor, kernel: Tensor, border: str) -> Tensor:
    """Apply one 3×3 kernel (or a stack of them) to every channel of x, size preserved.

    kernel is (3, 3) or (M, 3, 3); the result has C·M channels, grouped per input channel.
    """
    channels = x.shape[1]
    k = kernel.reshape(-1, 1, 3, 3).to(dtype=x.dtype)  # (M, 1, 3, 3)
    weight = k.repeat(channels, 1, 1, 1)  # (C·M, 1, 3, 3)
    padded = F.pad(x, (1, 1, 1, 1), mode=border)
    return F.conv2d(padded, weight, groups=channels)  # (N, C·M, H, W)


class GaussianBlur(nn.Module):
    """3×3 Gaussian blur with σ = 1 and a reflect border."""

    kernel: Tensor

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("kernel", gaussian_kernel(sigma), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return depthwise(x, self.kernel, "reflect")


class Laplacian(nn.Module):
    """3×3 unnormalised Laplacian with a reflect border."""

    kernel: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernel", laplacian_kernel(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return depthwise(x, self.kernel, "reflect")


class SobelMagnitude(nn.Module):
    """Gradient magnitude sqrt(gx² + gy² + eps) of the unnormalised Sobel pair.

    The border is replicated and eps = 1e-6 keeps the square root differentiable at zero,
    both as in the reference implementation's edge operator.
    """

    kernel: Tensor
    eps = 1e-6

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernel", sobel_kernels(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        grads = depthwise(x, self.kernel, "replicate").view(n, c, 2, h, w)  # (N, C, 2, H, W)
        return torch.sqrt((grads * grads).sum(dim=2) + self.eps)  # (N, C, H, W)


def edge_operator(name: EdgeOperator) -> nn.Module:
    """The fixed edge filter of an EFE block, by name."""
    if name == "laplacian":
        return Laplacian()
    if name == "sobel":
        return SobelMagnitude()
    raise ValueError(f"unknown edge operator {name!r}: expected 'laplacian' or 'sobel'")
