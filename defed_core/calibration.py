"""Thresholds from held-out benign scores.

Two rules, both computed from the scores of benign images the networks never trained on:

- `mean_std`: threshold_i = μ_i + k·σ_i (the paper's confidence interval);
- `fpr`: every member's threshold is the same upper quantile of its own scores, that quantile
  chosen so that the ensemble (any member flags) flags `target_fpr` of the held-out images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

Rule = Literal["mean_std", "fpr"]


class CalibrationError(ValueError):
    pass


@dataclass(frozen=True)
class Calibration:
    rule: Rule
    mean: list[float]
    std: list[float]
    thresholds: list[float]
    images: int
    k: float | None = None
    target_fpr: float | None = None
    origin: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(**d)


def ensemble_fpr(scores: Tensor, thresholds: Tensor) -> float:
    """Fraction of frames flagged by at least one member."""
    return float((scores > thresholds).any(dim=1).float().mean())


def quantile_thresholds(scores: Tensor, target_fpr: float) -> Tensor:
    """Per-member quantiles at a common level q, q found by bisection on the ensemble's FPR."""
    lo, hi = 1.0 - target_fpr, 1.0  # the union flags at least as much as any one member
    for _ in range(50):
        q = (lo + hi) / 2
        if ensemble_fpr(scores, torch.quantile(scores, q, dim=0)) > target_fpr:
            lo = q
        else:
            hi = q
    return torch.quantile(scores, hi, dim=0)


def calibrate(
    scores: Tensor, rule: Rule, *, k: float = 3.0, target_fpr: float = 0.01, origin: dict[str, Any] | None = None
) -> Calibration:
    """Thresholds from benign scores (N, K) by the chosen rule."""
    if scores.ndim != 2 or scores.shape[0] < 2:
        raise CalibrationError(f"need scores of shape (N ≥ 2, K), got {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise CalibrationError("calibration scores contain NaN or infinity")
    scores = scores.double()
    mean, std = scores.mean(dim=0), scores.std(dim=0)
    if rule == "mean_std":
        thresholds = mean + k * std
    elif rule == "fpr":
        if not 0.0 < target_fpr < 1.0:
            raise CalibrationError(f"target FPR must lie in (0, 1), got {target_fpr}")
        thresholds = quantile_thresholds(scores, target_fpr)
    else:
        raise CalibrationError(f"unknown calibration rule {rule!r}: expected mean_std or fpr")
    return Calibration(
        rule=rule,
        mean=mean.tolist(),
        std=std.tolist(),
        thresholds=thresholds.tolist(),
        images=int(scores.shape[0]),
        k=k if rule == "mean_std" else None,
        target_fpr=target_fpr if rule == "fpr" else None,
        origin=origin or {},
    )
