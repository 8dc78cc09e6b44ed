"""ROC, AUC, budget thresholds and the noise test, against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defed_core.evaluation.metrics import (
    flagged_rate,
    proportion_gap_is_clear,
    roc,
    roc_auc,
    threshold_at_budget,
)


class TestRocAuc:
    def test_hand_computed_pairs(self) -> None:
        """Benign {0.1, 0.4} vs adversarial {0.35, 0.8}: 3 of 4 pairs ordered right → 0.75."""
        assert roc_auc([0.1, 0.4], [0.35, 0.8]) == pytest.approx(0.75)

    def test_ties_count_one_half(self) -> None:
        """Benign {0.2, 0.5} vs adversarial {0.5}: one pair right, one tie → (1 + 0.5)/2."""
        assert roc_auc([0.2, 0.5], [0.5]) == pytest.approx(0.75)

    def test_perfect_and_reversed(self) -> None:
        assert roc_auc(torch.tensor([0.0, 0.1]), torch.tensor([0.2, 0.3])) == 1.0
        assert roc_auc([0.2, 0.3], [0.0, 0.1]) == 0.0

    def test_never_flagging_detector_scores_one_half(self) -> None:
        """−∞ everywhere (no defence) ranks nothing: every pair is a tie."""
        assert roc_auc([float("-inf")] * 3, [float("-inf")] * 2) == pytest.approx(0.5)

    def test_no_adversarials_gives_none(self) -> None:
        assert roc_auc([0.1, 0.2], []) is None

    def test_curve_points(self) -> None:
        """Thresholds 0.8, 0.4, 0.35, 0.1 give (FPR, TPR) = (0, .5), (.5, .5), (.5, 1), (1, 1)."""
        fpr, tpr = roc([0.1, 0.4], [0.35, 0.8])
        points = set(zip(fpr.tolist(), tpr.tolist(), strict=True))
        assert {(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)} <= points


class TestThresholdAtBudget:
    def test_five_percent_of_hundred(self) -> None:
        """Scores 1..100 at a 5% budget: the threshold is 95, so exactly 96..100 are flagged."""
        scores = np.arange(1, 101, dtype=float)
        t = threshold_at_budget(scores, 0.05)
        assert t == 95.0 and flagged_rate(scores, t) == pytest.approx(0.05)

    def test_never_exceeds_budget_with_ties(self) -> None:
        scores = np.array([0.0] * 90 + [1.0] * 10)
        t = threshold_at_budget(scores, 0.05)
        assert flagged_rate(scores, t) <= 0.05

    def test_rejects_bad_budget(self) -> None:
        with pytest.raises(ValueError):
            threshold_at_budget([1.0, 2.0], 1.0)


class TestProportionGap:
    def test_large_gap_is_clear(self) -> None:
        assert proportion_gap_is_clear(0.9, 300, 0.5, 300)

    def test_small_gap_is_noise(self) -> None:
        """92% vs 90% on 300 each: 2 points, standard error ≈ 2.4 points → not clear."""
        assert not proportion_gap_is_clear(0.92, 300, 0.90, 300)
