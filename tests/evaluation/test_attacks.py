"""Attack cells (successful examples only) and the defence-aware PGD, on constructed models."""

from __future__ import annotations

import pytest
import torch
from toy_networks import Brightness, Identity

from defed_core.evaluation.adaptive import AdaptiveSpec, defence_aware_pgd, project
from defed_core.evaluation.attacks import AttackSpec, attack_until, mnist_grid
from defed_core.evaluation.detectors import DenoiserEnsemble


class TestSpecs:
    def test_mnist_grid_has_fifteen_cells(self) -> None:
        grid = mnist_grid()
        assert len(grid) == 15
        assert [s.eps for s in grid if s.name == "pgd-l2"] == [1.0, 2.0, 3.0]
        assert [s.label for s in grid if s.eps is None] == ["cw-l2", "deepfool", "jsma"]

    def test_budgeted_attack_needs_eps_and_minimum_norm_refuses_one(self) -> None:
        with pytest.raises(ValueError, match="needs an ε"):
            AttackSpec("pgd-linf")
        with pytest.raises(ValueError, match="takes no ε"):
            AttackSpec("deepfool", 0.3)
        with pytest.raises(ValueError, match="unknown attack"):
            AttackSpec("nope", 0.1)


class TestAttackUntil:
    def test_keeps_only_successes_and_stops_at_count(self) -> None:
        """Images at 0.55 (class 0): FGSM ε=0.1 darkens them to 0.45, flipping every one."""
        x = torch.full((10, 1, 4, 4), 0.55)
        x[0] = 0.2  # misclassified to begin with (true label 0, predicted 1): never attacked
        y = torch.zeros(10, dtype=torch.long)
        adv = attack_until(Brightness(), x, y, AttackSpec("fgsm", 0.1), count=4, num_classes=2, chunk=3,
                           progress=False)
        assert len(adv) == 4 and adv.attempted == 6  # two chunks of 3 were needed
        assert adv.found == 6 and adv.success_rate == 1.0  # the overshoot counts in the rate, not in the set
        assert (Brightness()(adv.adversarial).argmax(1) == 1).all()
        assert torch.allclose(adv.perturbation("linf"), torch.full((4,), 0.1), atol=1e-6)

    def test_too_small_eps_yields_nothing(self) -> None:
        x = torch.full((4, 1, 4, 4), 0.9)
        adv = attack_until(Brightness(), x, torch.zeros(4, dtype=torch.long), AttackSpec("fgsm", 0.1),
                           count=4, num_classes=2, progress=False)
        assert len(adv) == 0 and adv.attempted == 4 and adv.success_rate == 0.0


class TestAdaptive:
    def test_projection_stays_in_the_ball(self) -> None:
        d = torch.randn(5, 1, 4, 4)
        assert project(d, "linf", 0.1).abs().max() <= 0.1 + 1e-7
        assert torch.all(project(d, "l2", 0.5).flatten(1).norm(dim=1) <= 0.5 + 1e-6)

    def test_evasion_is_real_and_within_budget(self) -> None:
        """Identity 'denoisers' make the score CE(f(x'), t): a confident wrong label evades them."""
        f, members = Brightness(), [Identity(), Identity()]
        x, y = torch.full((3, 1, 4, 4), 0.6), torch.zeros(3, dtype=torch.long)
        thresholds = torch.tensor([0.3, 0.3])
        result = defence_aware_pgd(f, members, 1.0, thresholds, x, y, AdaptiveSpec("linf", 0.3, steps=30),
                                   progress=False)
        assert result.evaded.all()
        assert (result.adversarial - x).abs().max() <= 0.3 + 1e-6
        flagged, _ = DenoiserEnsemble(f, members, 1.0)(result.adversarial).decide(thresholds)
        assert not flagged.any() and (f(result.adversarial).argmax(1) != y).all()

    def test_unreachable_goal_is_reported_as_failure(self) -> None:
        f, members = Brightness(), [Identity()]
        x, y = torch.full((2, 1, 4, 4), 0.9), torch.zeros(2, dtype=torch.long)
        result = defence_aware_pgd(f, members, 1.0, torch.tensor([0.3]), x, y, AdaptiveSpec("linf", 0.05, steps=10),
                                   progress=False)
        assert not result.evaded.any()
