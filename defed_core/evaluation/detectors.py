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
  f on each squeezed copy — MNIST: 1-bit depth and a 2×2 median filter; CIFAR-10: 5-bit depth,
  2×2 median and non-local means — no recovery (a flagged image keeps f(x)).
- MagNet-style: the autoencoder's reconstruction error (mean squared on MNIST; on CIFAR-10 the
  mean absolute error plus the Jensen–Shannon divergence between f(x) and f(AE(x)) at
  temperatures 10 and 40, MagNet's three CIFAR detectors, as parts); every image, flagged or
  not, is labelled f(AE(x)) as MagNet's reformer does.
- no defence: never flags; labels f(x).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from defed_core.data import to_tensor, to_uint8
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


def non_local_means(x: Tensor, search: int = 13, patch: int = 3, strength: float = 2.0) -> Tensor:
    """OpenCV's fast non-local means on each image's 8-bit version, as Xu et al.'s code applies it.

    `search` and `patch` are the window sizes, `strength` the filter strength h (for colour images
    also the colour component's). Runs on the CPU, image by image; the detector needs no gradient.
    """
    images = to_uint8(x)  # (N, H, W, C) uint8, RGB for colour
    out = []
    for img in images:
        img = np.ascontiguousarray(img)
        if img.shape[2] == 3:  # OpenCV's colour version expects BGR (it denoises in CIELAB)
            bgr = cv2.fastNlMeansDenoisingColored(img[:, :, ::-1].copy(), None, strength, strength, patch, search)
            out.append(bgr[:, :, ::-1])
        else:
            out.append(cv2.fastNlMeansDenoising(img[:, :, 0], None, strength, patch, search)[:, :, None])
    return to_tensor(np.stack(out)).to(x.device)  # (N, C, H, W)


Squeezer = Callable[[Tensor], Tensor]


def squeezer(name: str) -> Squeezer:
    """A squeezer by Xu et al.'s name: "bit-depth-B", "median-2x2" or "non-local-means-S-P-H"."""
    if m := re.fullmatch(r"bit-depth-(\d+)", name):
        return functools.partial(bit_depth, bits=int(m[1]))
    if name == "median-2x2":
        return median_2x2
    if m := re.fullmatch(r"non-local-means-(\d+)-(\d+)-(\d+(?:\.\d+)?)", name):
        return functools.partial(non_local_means, search=int(m[1]), patch=int(m[2]), strength=float(m[3]))
    raise ValueError(f"unknown squeezer {name!r}: expected bit-depth-B, median-2x2 or non-local-means-S-P-H")


class FeatureSqueezing:
    """Xu et al.'s joint detector: the largest L1 gap between f's softmax on x and on each squeezed x.

    The default squeezers are their MNIST setting (1-bit depth, 2×2 median filter).
    """

    def __init__(self, classifier: nn.Module, squeezers: Sequence[str] = ("bit-depth-1", "median-2x2")) -> None:
        self.classifier, self.names = classifier.eval(), tuple(squeezers)
        self.squeezers = [squeezer(name) for name in self.names]

    def __call__(self, x: Tensor) -> Inspection:
        x = x.to(device_of(self.classifier))
        n = len(x)
        batch = torch.cat([x, *(squeeze(x) for squeeze in self.squeezers)])  # (S+1)·N images: one classifier call
        probs = self.classifier(batch).softmax(dim=1).view(len(self.squeezers) + 1, n, -1)  # (S+1, N, classes)
        l1 = (probs[1:] - probs[0]).abs().sum(dim=2)  # (S, N)
        return Inspection(l1.amax(dim=0)[:, None], probs[:1], probs[0].argmax(dim=1))


@dataclass(frozen=True)
class MagNetScores:
    """Which of MagNet's detectors share the autoencoder: a reconstruction error and, per
    temperature T, the Jensen–Shannon divergence between softmax(f(x)/T) and softmax(f(AE(x))/T)."""

    reconstruction: Literal["mse", "l1"] = "mse"
    temperatures: tuple[float, ...] = ()

    @property
    def names(self) -> list[str]:
        return [self.reconstruction] + [f"jsd-T{t:g}" for t in self.temperatures]


def jensen_shannon(a: Tensor, b: Tensor) -> Tensor:
    """Jensen–Shannon divergence (natural log) between softmax(a) and softmax(b), row by row: (N,)."""
    p, q = a.softmax(dim=1), b.softmax(dim=1)  # (N, classes)
    m = (p + q) / 2
    kl_pm = (torch.xlogy(p, p) - torch.xlogy(p, m)).sum(dim=1)
    kl_qm = (torch.xlogy(q, q) - torch.xlogy(q, m)).sum(dim=1)
    return (kl_pm + kl_qm) / 2


class MagNetDetector:
    """MagNet's detectors on one autoencoder (parts of the inspection) and f(AE(x)) as the label (reformer)."""

    def __init__(self, classifier: nn.Module, autoencoder: nn.Module, scores: MagNetScores = MagNetScores()) -> None:
        self.classifier, self.autoencoder, self.scores = classifier.eval(), autoencoder.eval(), scores

    def __call__(self, x: Tensor) -> Inspection:
        x = x.to(device_of(self.classifier))
        reformed = self.autoencoder.to(x.device)(x)  # (N, C, H, W)
        diff = (reformed - x).flatten(1)  # (N, C·H·W)
        parts = [diff.pow(2).mean(dim=1) if self.scores.reconstruction == "mse" else diff.abs().mean(dim=1)]
        if self.scores.temperatures:
            logits = self.classifier(torch.cat([x, reformed]))  # (2N, classes): one classifier call
            own, healed = logits[: len(x)], logits[len(x) :]
            parts += [jensen_shannon(own / t, healed / t) for t in self.scores.temperatures]
            probs = healed.softmax(dim=1)  # (N, classes)
        else:
            probs = self.classifier(reformed).softmax(dim=1)
        k = len(parts)
        return Inspection(torch.stack(parts, dim=1), probs[None].expand(k, -1, -1), probs.argmax(dim=1))


class NoDefence:
    """The bare classifier: nothing is ever flagged (score −∞)."""

    def __init__(self, classifier: nn.Module) -> None:
        self.classifier = classifier.eval()

    def __call__(self, x: Tensor) -> Inspection:
        probs = self.classifier(x.to(device_of(self.classifier))).softmax(dim=1)
        return Inspection(torch.full((len(x), 1), float("-inf"), device=probs.device), probs[None],
                          probs.argmax(dim=1))
