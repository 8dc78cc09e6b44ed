"""Threshold rules on held-out benign scores."""

import pytest
import torch

from defed_core.calibration import CalibrationError, calibrate, ensemble_fpr


class TestMeanStd:
    def test_threshold_is_mean_plus_k_std(self) -> None:
        scores = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
        cal = calibrate(scores, "mean_std", k=2.0)
        std0 = torch.tensor([1.0, 3.0]).std().item()
        assert cal.thresholds[0] == pytest.approx(2.0 + 2 * std0)
        assert cal.mean == pytest.approx([2.0, 20.0]) and cal.k == 2.0 and cal.images == 2


class TestTargetFpr:
    def test_ensemble_flags_the_target_share_of_held_out_images(self) -> None:
        """With independent members, the union FPR on the calibration scores meets the target."""
        scores = torch.rand(10_000, 3, generator=torch.Generator().manual_seed(0))
        cal = calibrate(scores, "fpr", target_fpr=0.05)
        fpr = ensemble_fpr(scores.double(), torch.tensor(cal.thresholds, dtype=torch.float64))
        assert 0.045 <= fpr <= 0.05
        # Same quantile level for every member: thresholds are nearly equal for identical marginals.
        assert max(cal.thresholds) - min(cal.thresholds) < 0.01

    def test_single_member_is_a_plain_quantile(self) -> None:
        scores = torch.arange(1000.0)[:, None]
        cal = calibrate(scores, "fpr", target_fpr=0.01)
        assert 988 <= cal.thresholds[0] <= 990

    def test_bad_target_refused(self) -> None:
        with pytest.raises(CalibrationError, match="target FPR"):
            calibrate(torch.rand(10, 2), "fpr", target_fpr=1.5)


def test_non_finite_scores_refused() -> None:
    with pytest.raises(CalibrationError, match="NaN"):
        calibrate(torch.tensor([[1.0], [float("nan")]]), "mean_std")


def test_unknown_rule_refused() -> None:
    with pytest.raises(CalibrationError, match="unknown calibration rule"):
        calibrate(torch.rand(4, 1), "median")  # type: ignore[arg-type]
