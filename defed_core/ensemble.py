"""The Defed ensemble: member scores, the detection rule and the label rule (DESIGN §1).

For member i and input x, with f the classifier and D_i the member's denoiser:

    s_i(x) = alpha · CE(f(D_i(x)), argmax f(x)) + mean((D_i(x) − x)²)

Member i flags x when s_i(x) > threshold_i; a frame is adversarial when any member flags it.
A benign frame is labelled argmax f(x); a flagged one gets the argmax of the summed softmax of
f(D_i(x)) over the members that flagged it (the recovered label).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Decision:
    """The ensemble's verdict on a batch of N frames with K members."""

    label: Tensor  # (N,) int64: the label to act on (recovered when adversarial)
    original_label: Tensor  # (N,) int64: argmax f(x)
    adversarial: Tensor  # (N,) bool
    confidence: Tensor  # (N,) float: probability of `label` (see `decide`)
    scores: Tensor  # (N, K) float
    member_flags: Tensor  # (N, K) bool

    def to(self, device: torch.device | str) -> Decision:
        return Decision(
            *(
                t.to(device)
                for t in (
                    self.label,
                    self.original_label,
                    self.adversarial,
                    self.confidence,
                    self.scores,
                    self.member_flags,
                )
            )
        )

    def __len__(self) -> int:
        return int(self.label.shape[0])


@dataclass(frozen=True)
class MemberOutputs:
    """What the networks produce for a batch; everything the rules need."""

    logits: Tensor  # (N, classes): f(x)
    denoised: Tensor  # (K, N, C, H, W): D_i(x)
    denoised_logits: Tensor  # (K, N, classes): f(D_i(x))


def run_members(classifier: nn.Module, denoisers: Sequence[nn.Module], x: Tensor) -> MemberOutputs:
    """Classifier on x once, each denoiser once, then the classifier on all K outputs in one call."""
    logits = classifier(x)  # (N, classes)
    denoised = torch.stack([d(x) for d in denoisers])  # (K, N, C, H, W)
    k, n = denoised.shape[:2]
    denoised_logits = classifier(denoised.flatten(0, 1)).view(k, n, -1)  # (K, N, classes)
    return MemberOutputs(logits, denoised, denoised_logits)


def member_scores(out: MemberOutputs, x: Tensor, alpha: float) -> Tensor:
    """s_i(x) for every frame and member: (N, K)."""
    k, n = out.denoised.shape[:2]
    predicted = out.logits.argmax(dim=1)  # (N,)
    ce = F.cross_entropy(out.denoised_logits.flatten(0, 1), predicted.repeat(k), reduction="none").view(k, n)
    mse = (out.denoised - x.unsqueeze(0)).pow(2).flatten(2).mean(dim=2)  # (K, N)
    return (alpha * ce + mse).t()  # (N, K)


def decide(out: MemberOutputs, scores: Tensor, thresholds: Tensor) -> Decision:
    """Apply the detection and label rules.

    Confidence is the softmax probability of the chosen label: from f(x) for a benign frame,
    and the mean over the flagging members of softmax(f(D_i(x))) for a flagged one.
    """
    flags = scores > thresholds  # (N, K)
    adversarial = flags.any(dim=1)  # (N,)
    probs = out.logits.softmax(dim=1)  # (N, classes)
    original = probs.argmax(dim=1)
    denoised_probs = out.denoised_logits.softmax(dim=2)  # (K, N, classes)
    flagged_sum = (denoised_probs * flags.t().unsqueeze(2)).sum(dim=0)  # (N, classes)
    recovered = flagged_sum.argmax(dim=1)
    label = torch.where(adversarial, recovered, original)
    n_flags = flags.sum(dim=1).clamp(min=1)
    recovered_conf = flagged_sum.gather(1, recovered[:, None]).squeeze(1) / n_flags
    original_conf = probs.gather(1, original[:, None]).squeeze(1)
    confidence = torch.where(adversarial, recovered_conf, original_conf)
    return Decision(label, original, adversarial, confidence, scores, flags)
