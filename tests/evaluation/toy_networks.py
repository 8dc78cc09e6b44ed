"""Tiny networks with known behaviour for attack and detector tests, any number of channels."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Brightness(nn.Module):
    """Class 0 when the mean value is above 0.5, class 1 below."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x: Tensor) -> Tensor:
        m = x.flatten(1).mean(dim=1) - 0.5
        return torch.stack([self.scale * m, -self.scale * m], dim=1)  # (N, 2)


class Identity(nn.Module):
    """A denoiser that changes nothing, with a parameter so that it has a device and gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        return x + 0 * self.dummy
