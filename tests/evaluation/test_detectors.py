"""Each detector on constructed inputs, and the shared decision rule against the bundle's own."""

from __future__ import annotations

import pytest
import scipy.ndimage
import torch
from torch import Tensor, nn

from defed_core.evaluation.detectors import (
    DenoiserEnsemble,
    FeatureSqueezing,
    Inspection,
    MagNetDetector,
    NoDefence,
    bit_depth,
    inspect_all,
    median_2x2,
)
from defed_core.testing import untrained_bundle


class Brightness(nn.Module):
    """Logits (10·mean, −10·mean): class 0 for bright images, 1 for dark; sensitive to every pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: Tensor) -> Tensor:
        m = x.flatten(1).mean(dim=1) - 0.25  # (N,)
        return torch.stack([self.scale * m, -self.scale * m], dim=1)  # (N, 2)


class Constant(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        return torch.full_like(x, self.value)


class TestInspectionDecide:
    def test_flags_and_recovers_from_flagging_parts_only(self) -> None:
        """Image 0: no part over 1 → passed label. Image 1: part 1 alone flags → its argmax (2)."""
        parts = torch.tensor([[0.5, 0.9], [0.2, 3.0]])  # (N=2, K=2)
        probs = torch.tensor([[[0.0, 0.9, 0.1], [0.8, 0.1, 0.1]],  # part 0 for images 0, 1
                              [[0.1, 0.1, 0.8], [0.1, 0.1, 0.8]]])  # part 1: (K, N, classes)
        flagged, label = Inspection(parts, probs, torch.tensor([7, 7])).decide(1.0)
        assert flagged.tolist() == [False, True] and label.tolist() == [7, 2]

    def test_one_threshold_per_part(self) -> None:
        parts = torch.tensor([[0.5, 0.5]])
        flagged, _ = Inspection(parts, torch.ones(2, 1, 3), torch.tensor([0])).decide(torch.tensor([1.0, 0.4]))
        assert flagged.tolist() == [True]

    def test_matches_the_bundle_decision(self) -> None:
        """Raw member scores at the bundle's thresholds decide exactly as Bundle.predict."""
        bundle = untrained_bundle()
        x = torch.rand(20, 1, 28, 28)
        inspection = inspect_all(DenoiserEnsemble(bundle.classifier, bundle.denoisers, bundle.alpha), x)
        flagged, label = inspection.decide(bundle.thresholds)
        decision = bundle.predict(x)
        assert torch.allclose(inspection.parts, decision.scores, atol=1e-5)
        assert torch.equal(flagged, decision.adversarial) and torch.equal(label, decision.label)

    def test_standardized_member_view(self) -> None:
        ins = Inspection(torch.tensor([[2.0, 10.0]]), torch.ones(2, 1, 3), torch.tensor([0]))
        z = ins.standardized(torch.tensor([1.0, 4.0]), torch.tensor([1.0, 2.0]))
        assert z.parts.tolist() == [[1.0, 3.0]] and z.score.tolist() == [3.0]
        assert ins.member(1).parts.tolist() == [[10.0]]


class TestSqueezers:
    def test_one_bit_depth(self) -> None:
        assert bit_depth(torch.tensor([0.1, 0.49, 0.51, 0.9]), 1).tolist() == [0.0, 0.0, 1.0, 1.0]

    def test_median_matches_scipy(self) -> None:
        x = torch.rand(1, 1, 9, 7)
        expected = scipy.ndimage.median_filter(x[0, 0].numpy(), size=2)
        assert torch.allclose(median_2x2(x)[0, 0], torch.from_numpy(expected))

    def test_median_removes_an_isolated_pixel(self) -> None:
        x = torch.zeros(1, 1, 6, 6)
        x[0, 0, 3, 3] = 1.0
        assert median_2x2(x).sum() == 0


class TestFeatureSqueezing:
    def test_constant_binary_image_scores_zero(self) -> None:
        """Neither squeezer changes an all-black image, so the softmax outputs agree."""
        score = FeatureSqueezing(Brightness())(torch.zeros(1, 1, 8, 8)).score
        assert score.tolist() == [0.0]

    def test_grey_noise_scores_the_larger_l1_gap(self) -> None:
        f = Brightness()
        x = torch.full((1, 1, 8, 8), 0.4)  # bit depth → 0 (dark), median keeps 0.4
        with torch.no_grad():
            probs = [f(v).softmax(1) for v in (x, bit_depth(x, 1), median_2x2(x))]
        expected = max(float((probs[1] - probs[0]).abs().sum()), float((probs[2] - probs[0]).abs().sum()))
        with torch.no_grad():
            ins = FeatureSqueezing(f)(x)
        assert float(ins.score[0]) == pytest.approx(expected) and expected > 0.1
        assert int(ins.passed_label[0]) == int(f(x).argmax())  # no recovery: f(x) stands


class TestMagNet:
    def test_perfect_reconstruction_scores_zero(self) -> None:
        class Identity(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.dummy = nn.Parameter(torch.zeros(()))

            def forward(self, x: Tensor) -> Tensor:
                return x

        x = torch.rand(3, 1, 8, 8)
        ins = MagNetDetector(Brightness(), Identity())(x)
        assert torch.allclose(ins.score, torch.zeros(3))

    def test_score_is_mean_squared_error_and_label_is_reformed(self) -> None:
        x = torch.rand(2, 1, 8, 8) * 0.2  # dark images (class 1); the "autoencoder" outputs bright ones
        ins = MagNetDetector(Brightness(), Constant(1.0))(x)
        assert torch.allclose(ins.score, (1.0 - x).pow(2).flatten(1).mean(1))
        assert ins.passed_label.tolist() == [0, 0]  # labelled from f(AE(x)), as MagNet's reformer does


class TestNoDefence:
    def test_never_flags(self) -> None:
        ins = NoDefence(Brightness())(torch.rand(4, 1, 8, 8))
        flagged, label = ins.decide(float("-inf"))
        assert not flagged.any() and torch.equal(label, ins.passed_label)
