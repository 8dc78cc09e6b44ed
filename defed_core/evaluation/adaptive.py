"""A defence-aware attack on the whole Defed pipeline: PGD through the classifier and the denoisers.

The attacker knows everything (weights, α, thresholds) and wants a frame the gateway publishes as
benign with a wrong label: f(x') ≠ y and s_i(x') ≤ threshold_i for every member i. PGD minimises

    relu(f_y(x') − f_t(x') + κ)  +  λ · Σ_i relu(s_i(x'; t) − m · threshold_i)

where t is the most likely wrong class at the current step and s_i(x'; t) = α·CE(f(D_i(x')), t) +
mean((D_i(x') − x')²) is member i's score once f predicts t — exactly s_i(x') when the attack has
succeeded. m < 1 aims below the thresholds for a safety margin. Every step is differentiated
through the denoisers: they are plain networks (the final clamp has a zero gradient where it is
active, which PGD tolerates), so no BPDA or EOT is needed. After every step each image that
meets the goal keeps its iterate, so the result is the first evasion found, checked exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812 — the name every PyTorch reader expects
from torch import Tensor, nn
from tqdm import tqdm


@dataclass(frozen=True)
class AdaptiveSpec:
    norm: Literal["linf", "l2"]
    eps: float
    steps: int = 100
    weight: float = 10.0  # λ: the price of a member score above its aim
    aim: float = 0.8  # m: aim at this fraction of each threshold
    kappa: float = 1.0  # κ: logit margin the wrong class should win by
    seed: int = 0

    @property
    def label(self) -> str:
        return f"adaptive-pgd-{self.norm} ε={self.eps:g}"

    @property
    def step_size(self) -> float:
        return 2.5 * self.eps / self.steps  # Madry et al.'s rule: the budget can be crossed 2.5 times


@dataclass(frozen=True)
class AdaptiveResult:
    spec: AdaptiveSpec
    adversarial: Tensor  # (N, C, H, W): the first evading iterate, else the last one
    evaded: Tensor  # (N,) bool: fooled f and stayed under every threshold (as attacked)
    labels: Tensor  # (N,) true labels


def scores_against(classifier: nn.Module, denoisers: Sequence[nn.Module], alpha: float, x: Tensor, target: Tensor,
                   ) -> tuple[Tensor, Tensor]:
    """(logits (N, classes), member scores (K, N) computed with `target` as the predicted label)."""
    logits = classifier(x)  # (N, classes)
    denoised = torch.stack([d(x) for d in denoisers])  # (K, N, C, H, W)
    k, n = denoised.shape[:2]
    denoised_logits = classifier(denoised.flatten(0, 1))  # (K·N, classes)
    ce = F.cross_entropy(denoised_logits, target.repeat(k), reduction="none").view(k, n)  # (K, N)
    mse = (denoised - x.unsqueeze(0)).pow(2).flatten(2).mean(dim=2)  # (K, N)
    return logits, alpha * ce + mse


def project(delta: Tensor, norm: str, eps: float) -> Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    size: Tensor = delta.flatten(1).norm(dim=1).clamp(min=1e-12)  # (N,)
    scale = (eps / size).clamp(max=1.0).view(-1, *([1] * (delta.ndim - 1)))  # (N, 1, 1, 1)
    return delta * scale


def ascent_direction(grad: Tensor, norm: str) -> Tensor:
    if norm == "linf":
        return grad.sign()
    size: Tensor = grad.flatten(1).norm(dim=1).clamp(min=1e-12)  # (N,)
    return grad / size.view(-1, *([1] * (grad.ndim - 1)))


def defence_aware_pgd(
    classifier: nn.Module, denoisers: Sequence[nn.Module], alpha: float, thresholds: Tensor, x: Tensor, y: Tensor,
    spec: AdaptiveSpec, progress: bool = True,
) -> AdaptiveResult:
    """Attack x (N, C, H, W) with labels y against members with raw thresholds (K,)."""
    classifier.eval()
    for d in denoisers:
        d.eval()
    device = next(classifier.parameters()).device
    x, y, thr = x.to(device), y.to(device), thresholds.to(device).view(-1, 1)  # thr: (K, 1)
    torch.manual_seed(spec.seed)
    # A small random start inside the ball, so the first gradient is not the one plain PGD also takes.
    delta = project((torch.rand_like(x) * 2 - 1) * spec.eps * 0.1, spec.norm, spec.eps)
    best, evaded = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=device)
    rows = torch.arange(len(x), device=device)
    for _ in tqdm(range(spec.steps + 1), desc=spec.label, leave=False, disable=not progress):
        xa = (x + delta).clamp(0.0, 1.0).requires_grad_(True)
        with torch.enable_grad():
            logits = classifier(xa)
            wrong = logits.detach().clone()
            wrong[rows, y] = float("-inf")
            target = wrong.argmax(dim=1)  # (N,) the best wrong class now
            logits, member = scores_against(classifier, denoisers, alpha, xa, target)
            # Exact goal check: once f(x') ≠ y its argmax is `target`, so `member` are the real scores.
            now = (logits.argmax(dim=1) != y) & (member <= thr).all(dim=0)
            fresh = now & ~evaded
            best[fresh] = xa.detach()[fresh]
            evaded = evaded | now
            margin = logits[rows, y] - logits[rows, target]  # (N,)
            loss = F.relu(margin + spec.kappa) + spec.weight * F.relu(member - spec.aim * thr).sum(dim=0)
            (grad,) = torch.autograd.grad(loss.sum(), xa)
        if bool(evaded.all()):
            break
        delta = project(delta - spec.step_size * ascent_direction(grad, spec.norm), spec.norm, spec.eps)
        delta = (x + delta).clamp(0.0, 1.0) - x  # stay a valid image
    last = (x + delta).clamp(0.0, 1.0)
    best = torch.where(evaded.view(-1, 1, 1, 1), best, last)
    return AdaptiveResult(spec, best.detach().cpu(), evaded.cpu(), y.cpu())
