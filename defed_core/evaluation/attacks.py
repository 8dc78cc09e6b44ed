"""Adversarial examples against a classifier, made with the Adversarial Robustness Toolbox (ART).

Needs the `eval` extra (`pip install 'defed-gateway[eval]'`). Only attacks that succeed are
kept: the source image was classified correctly and the adversarial one is not. A detector is
judged on what would actually fool the classifier; an attack that failed needs no detecting.

Budgeted attacks (FGSM, PGD, Square) take an ε; the minimum-perturbation attacks (C&W-L2,
DeepFool, JSMA) take none and find the smallest change they can, so they form one cell each.
The settings that depend on the images (ε grid, PGD step, Square's queries, C&W's first step)
are an `AttackSettings`; `defed_core.evaluation.profiles` holds the MNIST and CIFAR-10 ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

Norm = Literal["linf", "l2", "l0"]

# The threat model of each attack: the norm it bounds (or minimises) and whether it needs ε.
ATTACK_NORMS: dict[str, Norm] = {
    "fgsm": "linf", "pgd-linf": "linf", "pgd-l2": "l2", "square": "linf",
    "cw-l2": "l2", "deepfool": "l2", "jsma": "l0",
}
BUDGETED = ("fgsm", "pgd-linf", "pgd-l2", "square")
WHITE_BOX = ("fgsm", "pgd-linf", "pgd-l2", "cw-l2", "deepfool", "jsma")

# MNIST budgets (inputs in [0, 1]).
MNIST_EPS: dict[Norm, tuple[float, ...]] = {"linf": (0.1, 0.2, 0.3), "l2": (1.0, 2.0, 3.0)}


@dataclass(frozen=True)
class AttackSettings:
    """The attack parameters that depend on the images; the defaults are the MNIST report's."""

    pgd_steps: int = 40
    pgd_linf_step: float | None = 0.01  # a fixed L∞ step; None: ε / pgd_linf_divisor
    pgd_linf_divisor: float = 10.0
    pgd_l2_divisor: float = 20.0  # L2 step = ε / this
    square_queries: int = 300
    square_p_init: float = 0.8  # share of the image the first squares cover
    cw_learning_rate: float = 0.1

    def pgd_step(self, norm: Norm, eps: float) -> float:
        if norm == "linf":
            return self.pgd_linf_step if self.pgd_linf_step is not None else eps / self.pgd_linf_divisor
        return eps / self.pgd_l2_divisor


MNIST_ATTACKS = AttackSettings()


def budget_text(eps: float, in_255ths: bool = False) -> str:
    """ε as the report shows it: "0.3", or "8/255" for budgets counted in 8-bit grey levels."""
    if in_255ths and abs(eps * 255 - round(eps * 255)) < 1e-6:
        return f"{round(eps * 255)}/255"
    return f"{eps:g}"


@dataclass(frozen=True)
class AttackSpec:
    """One attack at one budget: `name` is one of ATTACK_NORMS; `eps` is None for minimum-norm attacks."""

    name: str
    eps: float | None = None
    steps: int = 40
    step_size: float | None = None  # PGD: default 0.01 for L∞ and eps/20 for L2
    seed: int = 0
    eps_text: str | None = None  # how the label shows ε (e.g. "8/255"); default f"{eps:g}"

    def __post_init__(self) -> None:
        if self.name not in ATTACK_NORMS:
            raise ValueError(f"unknown attack {self.name!r}: expected one of {', '.join(ATTACK_NORMS)}")
        if (self.eps is None) == (self.name in BUDGETED):
            need = "needs an ε" if self.name in BUDGETED else "takes no ε (it minimises the perturbation)"
            raise ValueError(f"attack {self.name!r} {need}")

    @property
    def norm(self) -> Norm:
        return ATTACK_NORMS[self.name]

    @property
    def budget(self) -> str | None:
        if self.eps is None:
            return None
        return self.eps_text or budget_text(self.eps)

    @property
    def label(self) -> str:
        return self.name if self.eps is None else f"{self.name} ε={self.budget}"


def attack_grid(names: tuple[str, ...], eps: dict[Norm, tuple[float, ...]], settings: AttackSettings,
                seed: int = 0, linf_in_255ths: bool = False) -> list[AttackSpec]:
    """Every named attack at every budget of its norm (one cell for each minimum-norm attack).

    With `linf_in_255ths`, L∞ budgets are labelled in 8-bit grey levels ("8/255").
    """
    specs = []
    for name in names:
        if name not in BUDGETED:
            specs.append(AttackSpec(name, seed=seed))
            continue
        norm = ATTACK_NORMS[name]
        specs += [AttackSpec(name, e, steps=settings.pgd_steps, step_size=settings.pgd_step(norm, e), seed=seed,
                             eps_text=budget_text(e, linf_in_255ths and norm == "linf")) for e in eps[norm]]
    return specs


def mnist_grid(names: tuple[str, ...] = tuple(ATTACK_NORMS), seed: int = 0) -> list[AttackSpec]:
    """Every named attack at the MNIST budgets (one cell for each minimum-norm attack)."""
    return attack_grid(names, MNIST_EPS, MNIST_ATTACKS, seed)


def art_classifier(classifier: nn.Module, input_shape: tuple[int, int, int], num_classes: int) -> Any:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=classifier, loss=nn.CrossEntropyLoss(), input_shape=input_shape, nb_classes=num_classes,
        clip_values=(0.0, 1.0), device_type="gpu" if next(classifier.parameters()).is_cuda else "cpu",
    )


def build_attack(spec: AttackSpec, estimator: Any, batch_size: int = 256,
                 settings: AttackSettings = MNIST_ATTACKS) -> Any:
    """The ART attack object for a spec. Settings are ART's published defaults unless noted."""
    from art.attacks.evasion import (
        CarliniL2Method,
        DeepFool,
        FastGradientMethod,
        ProjectedGradientDescent,
        SaliencyMapMethod,
        SquareAttack,
    )

    eps = spec.eps or 0.0
    builders: dict[str, Callable[[], Any]] = {
        "fgsm": lambda: FastGradientMethod(estimator, norm=np.inf, eps=eps, batch_size=batch_size),
        "pgd-linf": lambda: ProjectedGradientDescent(
            estimator, norm=np.inf, eps=eps, eps_step=spec.step_size or 0.01, max_iter=spec.steps,
            num_random_init=0, batch_size=batch_size, verbose=False),
        "pgd-l2": lambda: ProjectedGradientDescent(
            estimator, norm=2, eps=eps, eps_step=spec.step_size or eps / 20, max_iter=spec.steps,
            num_random_init=0, batch_size=batch_size, verbose=False),
        # Black-box: only the classifier's outputs are queried. A few hundred queries per image keep a
        # cell within minutes on a CPU (ART's default is 100); the numbers are the settings' (profiles.py).
        "square": lambda: SquareAttack(estimator, norm=np.inf, eps=eps, max_iter=settings.square_queries,
                                       p_init=settings.square_p_init, nb_restarts=1, batch_size=batch_size,
                                       verbose=False),
        # 3 binary-search steps × 20 iterations (ART: 10 × 10) with a shorter line search: on MNIST (first
        # step 0.1) it still fools the classifier on nearly every image, at ~0.2 s per image.
        "cw-l2": lambda: CarliniL2Method(estimator, confidence=0.0, learning_rate=settings.cw_learning_rate,
                                         binary_search_steps=3, max_iter=20, initial_const=1.0, max_halving=2,
                                         max_doubling=2, batch_size=batch_size, verbose=False),
        # 2% overshoot (DeepFool's `epsilon`) so the example lands past the decision boundary.
        "deepfool": lambda: DeepFool(estimator, max_iter=50, epsilon=0.02, nb_grads=10, batch_size=batch_size,
                                     verbose=False),
        # Papernot et al.'s MNIST setting: pixels pushed to the maximum, at most 10% of them changed.
        "jsma": lambda: SaliencyMapMethod(estimator, theta=1.0, gamma=0.1, batch_size=batch_size, verbose=False),
    }
    return builders[spec.name]()


@torch.inference_mode()
def predict_labels(classifier: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    device = next(classifier.parameters()).device
    return torch.cat([classifier(x[i : i + batch_size].to(device)).argmax(1).cpu()
                      for i in range(0, len(x), batch_size)])


@dataclass(frozen=True)
class AdversarialSet:
    """Successful adversarial examples of one cell, with their sources."""

    spec: AttackSpec
    adversarial: Tensor  # (M, C, H, W)
    source: Tensor  # (M, C, H, W)
    labels: Tensor  # (M,) true labels
    attempted: int  # correctly classified images attacked to get these M
    found: int  # successes among them (≥ M: the last chunk may overshoot the count)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def success_rate(self) -> float:
        return self.found / max(1, self.attempted)

    def perturbation(self, norm: Norm) -> Tensor:
        """Size of each perturbation in the given norm: (M,)."""
        delta = (self.adversarial - self.source).flatten(1)  # (M, C·H·W)
        if norm == "linf":
            return delta.abs().amax(dim=1)
        if norm == "l2":
            size: Tensor = delta.norm(dim=1)
            return size
        return (delta.abs() > 1e-6).sum(dim=1).float()


def attack_until(
    classifier: nn.Module, x: Tensor, y: Tensor, spec: AttackSpec, count: int, num_classes: int = 10,
    chunk: int = 128, max_attempts: int | None = None, progress: bool = True,
    settings: AttackSettings = MNIST_ATTACKS,
) -> AdversarialSet:
    """Attack correctly classified images of x, in order, until `count` attacks succeeded.

    x should already be in a seeded random order; the same order for every cell makes cells
    attack the same images first. Stops early when x runs out or after `max_attempts` images
    (a weak attack at a small ε then yields fewer examples rather than an endless cell).
    """
    classifier.eval()
    correct = predict_labels(classifier, x) == y
    x, y = x[correct], y[correct]
    estimator = art_classifier(classifier, tuple(x.shape[1:]), num_classes)  # type: ignore[arg-type]
    attack = build_attack(spec, estimator, batch_size=chunk, settings=settings)
    np.random.seed(spec.seed)  # ART draws its random choices from numpy's global generator
    kept: list[tuple[Tensor, Tensor, Tensor]] = []
    found, attempted = 0, 0
    bar = tqdm(total=count, desc=spec.label, unit="adv", leave=False, disable=not progress)
    limit = min(len(x), max_attempts or len(x))
    while found < count and attempted < limit:
        src, lab = x[attempted : attempted + chunk], y[attempted : attempted + chunk]
        # JSMA is a targeted attack: without y, ART picks a random wrong target per image.
        target = None if spec.name == "jsma" else lab.numpy()
        adv = torch.from_numpy(attack.generate(src.numpy(), y=target)).float()  # (B, C, H, W)
        fooled = predict_labels(classifier, adv) != lab
        kept.append((adv[fooled], src[fooled], lab[fooled]))
        attempted += len(lab)
        found += int(fooled.sum())
        bar.update(min(int(fooled.sum()), count - bar.n))
    bar.close()
    if not kept:
        empty = x[:0]
        return AdversarialSet(spec, empty, empty, y[:0], 0, 0)
    adv, src, lab = (torch.cat(parts)[:count] for parts in zip(*kept, strict=True))
    return AdversarialSet(spec, adv, src, lab, attempted, found)


def successful_adversarials(
    classifier: nn.Module, x: Tensor, y: Tensor, spec: AttackSpec, num_classes: int = 10, batch_size: int = 256,
) -> tuple[Tensor, Tensor, Tensor]:
    """Attack every correctly classified image of x; keep the ones that now fail.

    Returns (x_adv, x_source, y_true) for the successful attacks only.
    """
    result = attack_until(classifier, x, y, spec, count=len(x), num_classes=num_classes, chunk=batch_size,
                          progress=False)
    return result.adversarial, result.source, result.labels
