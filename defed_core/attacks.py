"""Adversarial examples against a classifier, made with the Adversarial Robustness Toolbox.

Needs the `eval` extra (`pip install 'defed-gateway[eval]'`). Only attacks that succeed are
kept: the source image was classified correctly and the adversarial one is not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class AttackSpec:
    """One attack at one budget: `name` is fgsm, pgd-linf or pgd-l2."""

    name: str
    eps: float
    steps: int = 40
    step_size: float | None = None  # default: 0.01 for L∞ and eps/20 for L2
    seed: int = 0

    @property
    def label(self) -> str:
        return f"{self.name} ε={self.eps:g}"


def art_classifier(classifier: nn.Module, input_shape: tuple[int, int, int], num_classes: int) -> Any:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=classifier, loss=nn.CrossEntropyLoss(), input_shape=input_shape, nb_classes=num_classes,
        clip_values=(0.0, 1.0), device_type="gpu" if next(classifier.parameters()).is_cuda else "cpu",
    )


def build_attack(spec: AttackSpec, estimator: Any) -> Any:
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

    builders: dict[str, Callable[[], Any]] = {
        "fgsm": lambda: FastGradientMethod(estimator, norm=np.inf, eps=spec.eps),
        "pgd-linf": lambda: ProjectedGradientDescent(
            estimator, norm=np.inf, eps=spec.eps, eps_step=spec.step_size or 0.01, max_iter=spec.steps,
            num_random_init=0, verbose=False),
        "pgd-l2": lambda: ProjectedGradientDescent(
            estimator, norm=2, eps=spec.eps, eps_step=spec.step_size or spec.eps / 20, max_iter=spec.steps,
            num_random_init=0, verbose=False),
    }
    if spec.name not in builders:
        raise ValueError(f"unknown attack {spec.name!r}: expected one of {', '.join(builders)}")
    return builders[spec.name]()


@torch.inference_mode()
def predict_labels(classifier: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    device = next(classifier.parameters()).device
    return torch.cat([classifier(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def successful_adversarials(
    classifier: nn.Module, x: Tensor, y: Tensor, spec: AttackSpec, num_classes: int = 10, batch_size: int = 256,
) -> tuple[Tensor, Tensor, Tensor]:
    """Attack the correctly classified images of x; keep the ones that now fail.

    Returns (x_adv, x_source, y_true) for the successful attacks only.
    """
    classifier.eval()
    correct = predict_labels(classifier, x) == y
    x, y = x[correct], y[correct]
    estimator = art_classifier(classifier, tuple(x.shape[1:]), num_classes)  # type: ignore[arg-type]
    attack = build_attack(spec, estimator)
    np.random.seed(spec.seed)  # ART draws its random starts from numpy's global generator
    adv = torch.cat([
        torch.from_numpy(attack.generate(x[i : i + batch_size].numpy(), y=y[i : i + batch_size].numpy()))
        for i in range(0, len(x), batch_size)
    ])
    fooled = predict_labels(classifier, adv) != y
    return adv[fooled], x[fooled], y[fooled]
