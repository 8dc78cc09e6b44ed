"""Where the models run: CUDA when present (or asked for), else the CPU."""

from __future__ import annotations

from typing import Literal

import torch

DeviceChoice = Literal["auto", "cpu", "cuda"]


def select_device(choice: DeviceChoice | str = "auto") -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    if choice not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {choice!r}: expected auto, cpu or cuda")
    return torch.device(choice)
