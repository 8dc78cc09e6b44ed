"""The detectors under test, each reduced to what a threshold needs: scores and labels.

Every detector turns a batch into an `Inspection`: per-image part scores (N, K) — K members for
an ensemble, K = 1 otherwise — and, per part, the class probabilities it would label a flagged
image with. One rule then decides at any threshold, the Defed rule of DESIGN §1: a part flags an
image when its score exceeds its threshold; a flagged image gets the argmax of the summed
probabilities of the parts that flagged it, an unflagged one its `passed_label`.

- Defed / BaseNet ensemble: parts are the members' scores s_i standardised by the benign
  validation mean and standard deviation, z_i = (s_i − μ_i)/σ_i. One common threshold k on every
  z_i is the paper's μ_i + k·σ_i rule, so the ensemble's scalar score is max_i z_i.
- a single member: its raw s_i, recovering with f(D_i(x)).
- Feature Squeezing (Xu et al., NDSS 2018): max L1 distance between softmax(f(x)) and softmax of
  f on a bit-depth-reduced and on a 2×2-median-filtered copy; no recovery (a flagged image keeps f(x)).
- MagNet-style: mean squared reconstruction error of the autoencoder; every image, flagged or
  not, is labelled f(AE(x)) as MagNet's reformer does.
- no defence: never flags; labels f(x).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from defed_core.ensemble import member_scores, run_members


@dataclass(frozen=True)
class Inspection:
    """What one detector computed for N images; enough to decide at any threshold."""

    parts: Tensor  # (N, K) part scores, higher = more suspicious
    part_probs: Tensor  # (K, N, classes): the label each part recovers a flagged image with
    passed_label: Tensor  # (N,) label of an image no part flags

    @property
    def score(self) -> Tensor:
        """The scalar score (N,) that ROC curves rank: the largest part score."""
        return self.parts.amax(dim=1)

    def __len__(self) -> int:
        return int(self.parts.shape[0])

    def decide(self, threshold: Tensor | float) -> tuple[Tensor, Tensor]:
        """(flagged (N,) bool, final label (N,)) at one threshold, or one per part (K,)."""
        flags = self.parts > torch.as_tensor(threshold, dtype=self.parts.dtype)  # (N, K)
        flagged = flags.any(dim=1)
        recovered = (self.part_probs * flags.t().unsqueeze(2)).sum(dim=0).argmax(dim=1)  # (N,)
        return flagged, torch.where(flagged, recovered, self.passed_label)

    def member(self, i: int) -> Inspection:
        """The view of part i alone (a single ensemble member)."""
        return Inspection(self.parts[:, i : i + 1], self.part_probs[i : i + 1], self.passed_label)

    def standardized(self, mean: Tensor, std: Tensor) -> Inspection:
        return Inspection((self.parts - mean) / std, self.part_probs, self.passed_label)

    @staticmethod
    def cat(parts: list[Inspection]) -> Inspection:
        return Inspection(torch.cat([p.parts for p in parts]), torch.cat([p.part_probs for p in parts], dim=1),
                          torch.cat([p.passed_label for p in parts]))


Inspector = Callable[[Tensor], Inspection]


def inspect_all(inspector: Inspector, x: Tensor, batch_size: int = 500) -> Inspection:
    """Run an inspector over x (N, C, H, W) in batches; results on the CPU."""
    if len(x) == 0:  # an attack cell without a single success: shapes from one blank image, no rows
        blank = inspect_all(inspector, torch.zeros(1, *x.shape[1:]))
        return Inspection(blank.parts[:0], blank.part_probs[:, :0], blank.passed_label[:0])
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            r = inspector(x[i : i + batch_size])
            out.append(Inspection(r.parts.cpu(), r.part_probs.cpu(), r.passed_label.cpu()))
    return Inspection.cat(out)


def device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


class DenoiserEnsemble:
    """Raw member scores s_i (N, K) of a Defed (or BaseNet) ensemble; standardise for the ensemble rule."""

    def __init__(self, classifier: nn.Module, denoisers: Sequence[nn.Module], alpha: float) -> None:
        self.classifier, self.denoisers, self.alpha = classifier.eval(), [d.eval() for d in denoisers], alpha

    def __call__(self, x: Tensor) -> Inspection:
        x = x.to(device_of(self.classifier))
        out = run_members(self.classifier, self.denoisers, x)
        return Inspection(member_scores(out, x, self.alpha), out.denoised_logits.softmax(dim=2),
                          out.logits.argmax(dim=1))


def bit_depth(x: Tensor, bits: int) -> Tensor:
    """Quantise [0, 1] values to 2**bits levels."""
    levels = 2**bits - 1
    return torch.round(x * levels).div(levels)


def median_2x2(x: Tensor) -> Tensor:
    """2×2 median filter, size preserved, as scipy.ndimage.median_filter(size=2) computes it.

    The window covers the pixel and its upper and left neighbours (edges replicated), and of the
    four sorted values the third is taken (scipy's rank size // 2), so that isolated bright
    pixels — JSMA's — are removed.
    """
    padded = F.pad(x, (1, 0, 1, 0), mode="replicate")  # (N, C, H+1, W+1)
    windows = padded.unfold(2, 2, 1).unfold(3, 2, 1)  # (N, C, H, W, 2, 2)
    return windows.flatten(-2).sort(dim=-1).values[..., 2]  # (N, C, H, W)


class FeatureSqueezing:
    """Xu et al.'s joint detector for MNIST: 1-bit depth and a 2×2 median filter."""

    def __init__(self, classifier: nn.Module, bits: int = 1) -> None:
        self.classifier, self.bits = classifier.eval(), bits

    def __call__(self, x: Tensor) -> Inspection:
        x = x.to(device_of(self.classifier))
        n = len(x)
        batch = torch.cat([x, bit_depth(x, self.bits), median_2x2(x)])  # (3N, C, H, W): one classifier call
        probs = self.classifier(batch).softmax(dim=1).view(3, n, -1)  # (3, N, classes)
        l1 = (probs[1:] - probs[0]).abs().sum(dim=2)  # (2, N)
        return Inspection(l1.amax(dim=0)[:, None], probs[:1], probs[0].argmax(dim=1))


class MagNetDetector:
    """Reconstruction error of the autoencoder (detector) and f(AE(x)) as the label (reformer)."""

    def __init__(self, classifier: nn.Module, autoencoder: nn.Module) -> None:
        self.classifier, self.autoencoder = classifier.eval(), autoencoder.eval()

    def __call__(self, x: Tensor) -> Inspection:
        x = x.to(device_of(self.classifier))
        reformed = self.autoencoder.to(x.device)(x)  # (N, C, H, W)
        error = (reformed - x).pow(2).flatten(1).mean(dim=1)  # (N,)
        probs = self.classifier(reformed).softmax(dim=1)  # (N, classes)
        return Inspection(error[:, None], probs[None], probs.argmax(dim=1))


class NoDefence:
    """The bare classifier: nothing is ever flagged (score −∞)."""

    def __init__(self, classifier: nn.Module) -> None:
        self.classifier = classifier.eval()

    def __call__(self, x: Tensor) -> Inspection:
        probs = self.classifier(x.to(device_of(self.classifier))).softmax(dim=1)
        return Inspection(torch.full((len(x), 1), float("-inf"), device=probs.device), probs[None],
                          probs.argmax(dim=1))
