"""Score, threshold, decision and label rules on constructed cases."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from defed_core.ensemble import MemberOutputs, decide, member_scores, run_members


def outputs(
    logits: list[list[float]], denoised_logits: list[list[list[float]]], x: torch.Tensor, denoised: torch.Tensor
) -> MemberOutputs:
    return MemberOutputs(torch.tensor(logits), denoised, torch.tensor(denoised_logits))


class TestScores:
    def test_score_is_alpha_ce_plus_mse(self) -> None:
        """s_i = alpha·CE(f(D_i(x)), argmax f(x)) + mean((D_i(x) − x)²), per frame and member."""
        x = torch.zeros(1, 1, 2, 2)
        denoised = torch.stack([torch.full((1, 1, 2, 2), 0.5), torch.zeros(1, 1, 2, 2)])  # K=2
        out = outputs([[2.0, 0.0]], [[[0.0, 0.0]], [[5.0, 0.0]]], x, denoised)
        s = member_scores(out, x, alpha=2.0)
        ce0 = math.log(2)  # uniform logits, predicted class 0
        ce1 = F.cross_entropy(torch.tensor([[5.0, 0.0]]), torch.tensor([0])).item()
        assert s.shape == (1, 2)
        assert torch.allclose(s, torch.tensor([[2 * ce0 + 0.25, 2 * ce1 + 0.0]]))

    def test_run_members_calls_classifier_on_x_once_and_on_all_denoised_once(self) -> None:
        """Two classifier calls per batch, whatever K is."""
        calls = []

        class Counting(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                calls.append(x.shape[0])
                return x.flatten(1)[:, :3]

        x = torch.rand(4, 1, 4, 4)
        out = run_members(Counting(), [nn.Identity(), nn.Identity(), nn.Identity()], x)
        assert calls == [4, 12]
        assert out.denoised.shape == (3, 4, 1, 4, 4) and out.denoised_logits.shape == (3, 4, 3)


class TestDecision:
    def setup_method(self) -> None:
        # Two frames, two members, three classes.
        self.x = torch.zeros(2, 1, 1, 1)
        self.out = outputs(
            logits=[[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]],
            denoised_logits=[
                [[0.0, 0.0, 4.0], [0.0, 0.0, 1.0]],  # member 0
                [[0.0, 2.0, 0.0], [5.0, 0.0, 0.0]],
            ],  # member 1
            x=self.x,
            denoised=torch.zeros(2, 2, 1, 1, 1),
        )

    def test_no_flag_keeps_the_original_label(self) -> None:
        d = decide(self.out, torch.tensor([[0.1, 0.1], [0.1, 0.1]]), torch.tensor([1.0, 1.0]))
        assert d.adversarial.tolist() == [False, False]
        assert d.label.tolist() == [0, 1] == d.original_label.tolist()
        assert torch.allclose(d.confidence[0], torch.softmax(torch.tensor([3.0, 0, 0]), 0)[0])

    def test_any_member_flag_makes_the_frame_adversarial(self) -> None:
        """Strictly above the threshold flags; equal does not."""
        d = decide(self.out, torch.tensor([[2.0, 0.0], [1.0, 1.0]]), torch.tensor([1.0, 1.0]))
        assert d.member_flags.tolist() == [[True, False], [False, False]]
        assert d.adversarial.tolist() == [True, False]

    def test_recovered_label_sums_softmax_of_flagging_members_only(self) -> None:
        """Frame 0 flagged by member 0 only → argmax softmax(f(D_0)) = class 2."""
        d = decide(self.out, torch.tensor([[2.0, 0.0], [2.0, 2.0]]), torch.tensor([1.0, 1.0]))
        assert d.label[0].item() == 2 and d.original_label[0].item() == 0
        # Frame 1 flagged by both: softmax sums favour class 0 (member 1 is confident).
        p = torch.softmax(torch.tensor([0.0, 0.0, 1.0]), 0) + torch.softmax(torch.tensor([5.0, 0.0, 0.0]), 0)
        assert d.label[1].item() == int(p.argmax())
        assert torch.allclose(d.confidence[1], p.max() / 2)
