"""ROC curves, ROC-AUC, thresholds at a false-positive budget and detection rates.

Convention everywhere: a higher score means "more likely adversarial", benign images are the
negatives and adversarial ones the positives, and an image is flagged when score > threshold.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from torch import Tensor


def as_numpy(scores: Tensor | np.ndarray) -> np.ndarray:
    return scores.detach().cpu().double().numpy() if isinstance(scores, Tensor) else np.asarray(scores, dtype=float)


def labelled(benign: Tensor | np.ndarray, adversarial: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) with benign = 0 and adversarial = 1; −∞ (never flags) becomes the lowest finite value."""
    b, a = as_numpy(benign), as_numpy(adversarial)
    scores = np.concatenate([b, a])
    # sklearn rejects infinities; −∞ only ever means "below everything", so a very low number keeps the order.
    scores = np.where(np.isneginf(scores), -np.finfo(float).max, scores)
    return np.concatenate([np.zeros(len(b)), np.ones(len(a))]), scores


def roc(benign: Tensor | np.ndarray, adversarial: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) of the ROC curve, from (0, 0) to (1, 1)."""
    y, s = labelled(benign, adversarial)
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def roc_auc(benign: Tensor | np.ndarray, adversarial: Tensor | np.ndarray) -> float | None:
    """Area under the ROC curve (ties count one half); None without both kinds of image."""
    y, s = labelled(benign, adversarial)
    if len(set(y.tolist())) < 2:
        return None
    return float(roc_auc_score(y, s))


def threshold_at_budget(benign: Tensor | np.ndarray, budget: float) -> float:
    """The lowest threshold at which at most `budget` of the benign scores exceed it.

    It is one of the benign scores: the ⌈n(1 − budget)⌉-th smallest. Ties at that value can
    only lower the rate, so the budget is never exceeded on these images.
    """
    if not 0.0 <= budget < 1.0:
        raise ValueError(f"false-positive budget must lie in [0, 1), got {budget}")
    s = np.sort(as_numpy(benign))
    if len(s) == 0:
        raise ValueError("no benign scores to set a threshold on")
    index = max(0, math.ceil(len(s) * (1.0 - budget)) - 1)
    return float(s[index])


def flagged_rate(scores: Tensor | np.ndarray, threshold: float) -> float:
    """Share of images with score > threshold (the detection rate on adversarials, the FPR on benign)."""
    s = as_numpy(scores)
    return float((s > threshold).mean()) if len(s) else float("nan")


def proportion_gap_is_clear(p1: float, n1: int, p2: float, n2: int, z: float = 2.0) -> bool:
    """Whether two measured rates differ by more than z standard errors (binomial, pooled).

    Used to say "ahead" or "behind" only when the difference is not within sampling noise.
    """
    if n1 == 0 or n2 == 0:
        return False
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n1 + 1 / n2))
    return abs(p1 - p2) > z * se
