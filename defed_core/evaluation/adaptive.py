"""A defence-aware attack on the whole Defed pipeline: PGD through the classifier and the denoisers.

The attacker knows everything (weights, α, thresholds) and wants a frame the gateway publishes as
benign with a wrong label: f(x') ≠ y and s_i(x') ≤ threshold_i for every member i. PGD minimises

    relu(f_y(x') − f_t(x') + κ)  +  λ · Σ_i relu(s_i(x'; t) − m · threshold_i)

where t is the most likely wrong class at the current step and s_i(x'; t) = α·CE(f(D_i(x')), t) +
mean((D_i(x') − x')²) is member i's score once f predicts t — exactly s_i(x') when the attack has
succeeded. m < 1 aims below the thresholds for a safety margin. With the `relative` penalty the
second term is λ · Σ_i relu(s_i/threshold_i − m): the same goal in units of each threshold, so λ
means the same whatever the bundle's score scale (its α and its images set the units). The MNIST
report was made with the absolute form, where λ·excess stayed far below the logit margin, so the
attack first fooled f and only then pushed the scores down; the relative form weighs both goals
from the first step. Every step is differentiated
through the denoisers: they are plain networks (the final clamp has a zero gradient where it is
active, which PGD tolerates), so no BPDA or EOT is needed. After every step each image that
meets the goal keeps its iterate, so the result is the first evasion found, checked exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
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
    penalty: Literal["absolute", "relative"] = "absolute"  # score excess in score units or in thresholds
    eps_text: str | None = None  # how the label shows ε (e.g. "8/255")

    @property
    def label(self) -> str:
        return f"adaptive-pgd-{self.norm} ε={self.eps_text or f'{self.eps:g}'}"

    @property
    def step_size(self) -> float:
        return 2.5 * self.eps / self.steps  # Madry et al.'s rule: the budget can be crossed 2.5 times


@dataclass(frozen=True)
class AdaptiveResult:
    spec: AdaptiveSpec
    adversarial: Tensor  # (N, C, H, W): the first evading iterate, else the last one
    evaded: Tensor  # (N,) bool: fooled f and stayed under every threshold (as attacked)
    labels: Tensor  # (N,) true labels


def member_scores_for(classifier: nn.Module, denoisers: Sequence[nn.Module], alpha: float, x: Tensor,
                      target: Tensor) -> Tensor:
    """Member scores (K, N) computed with `target` as the predicted label, differentiable in x."""
    denoised = torch.stack([d(x) for d in denoisers])  # (K, N, C, H, W)
    k, n = denoised.shape[:2]
    denoised_logits = classifier(denoised.flatten(0, 1))  # (K·N, classes)
    ce = F.cross_entropy(denoised_logits, target.repeat(k), reduction="none").view(k, n)  # (K, N)
    mse = (denoised - x.unsqueeze(0)).pow(2).flatten(2).mean(dim=2)  # (K, N)
    return alpha * ce + mse


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
    for _ in tqdm(range(spec.steps + 1), desc=spec.label, leave=False, disable=not progress):
        # Only images still to break are attacked: on CPU the cost is per image and step.
        active = (~evaded).nonzero().squeeze(1)  # (A,)
        if len(active) == 0:
            break
        xs, ys = x[active], y[active]
        xa = (xs + delta[active]).clamp(0.0, 1.0).requires_grad_(True)
        rows = torch.arange(len(active), device=device)
        with torch.enable_grad():
            logits = classifier(xa)  # (A, classes)
            wrong = logits.detach().clone()
            wrong[rows, ys] = float("-inf")
            target = wrong.argmax(dim=1)  # (A,) the best wrong class now
            member = member_scores_for(classifier, denoisers, alpha, xa, target)  # (K, A)
            # Exact goal check: once f(x') ≠ y its argmax is `target`, so `member` are the real scores.
            now = (logits.argmax(dim=1) != ys) & (member <= thr).all(dim=0)
            best[active[now]] = xa.detach()[now]
            evaded[active[now]] = True
            margin = logits[rows, ys] - logits[rows, target]  # (A,)
            relative = spec.penalty == "relative"
            excess = member / thr.clamp(min=1e-12) - spec.aim if relative else member - spec.aim * thr  # (K, A)
            loss = F.relu(margin + spec.kappa) + spec.weight * F.relu(excess).sum(dim=0)
            (grad,) = torch.autograd.grad(loss.sum(), xa)
        step = project(delta[active] - spec.step_size * ascent_direction(grad, spec.norm), spec.norm, spec.eps)
        delta[active] = (xs + step).clamp(0.0, 1.0) - xs  # stay a valid image
    last = (x + delta).clamp(0.0, 1.0)
    best = torch.where(evaded.view(-1, 1, 1, 1), best, last)
    return AdaptiveResult(spec, best.detach().cpu(), evaded.cpu(), y.cpu())
