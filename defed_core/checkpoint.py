"""Training checkpoints: weights, model config, training config and progress in one file.

Saved with `torch.save` and read back with `weights_only=True`, so loading a checkpoint never
runs pickled code: every value is a tensor, a number, a string, a list or a dict.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

ModelKind = Literal["classifier", "denoiser"]


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or for something else."""


@dataclass
class Checkpoint:
    kind: ModelKind
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    optimizer: dict[str, Any] = field(default_factory=dict)
    epochs_done: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        """Write atomically: a crash mid-save leaves the previous checkpoint intact."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.__dict__, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, kind: ModelKind | None = None) -> Checkpoint:
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint")
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
            ckpt = cls(**raw)
        except Exception as exc:  # any unreadable or foreign file is one kind of error here
            raise CheckpointError(f"{path}: not a defed checkpoint ({exc})") from exc
        if kind is not None and ckpt.kind != kind:
            raise CheckpointError(f"{path}: a {ckpt.kind} checkpoint, expected a {kind}")
        return ckpt
