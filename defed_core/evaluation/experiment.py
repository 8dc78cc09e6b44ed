"""One evaluation run: thresholds on the validation split, then every attack cell on test images.

The order of a run:
1. every detector inspects the bundle's validation split (benign images no network trained on);
   the ensembles' μ_i, σ_i and every detector's threshold at the false-positive budget come from it;
2. a seeded sample of benign test images gives the test false-positive rate and benign accuracy;
3. each attack cell attacks test images (same seeded order for every cell) until it has its
   number of successful adversarial examples; every detector inspects them;
4. the adaptive attack runs against the Defed pipeline at every ε.
The test set never sets a threshold. The plan's profile (MNIST or CIFAR-10) sets the ε grid and
the attacks' image-dependent settings.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from defed_core.bundle import Bundle
from defed_core.data import ImageSet, to_tensor
from defed_core.evaluation.adaptive import defence_aware_pgd
from defed_core.evaluation.attacks import ATTACK_NORMS, WHITE_BOX, AdversarialSet, attack_until, predict_labels
from defed_core.evaluation.detectors import Inspection, Inspector, inspect_all
from defed_core.evaluation.metrics import roc_auc, threshold_at_budget
from defed_core.evaluation.profiles import PROFILES


@dataclass(frozen=True)
class EvaluationPlan:
    """What to run; every default is what the committed MNIST report used."""

    attacks: tuple[str, ...] = tuple(ATTACK_NORMS)
    per_cell: int = 150  # successful adversarial examples per (attack, ε) cell
    benign: int = 1500  # benign test images (negatives of every ROC curve)
    budget: float = 0.05  # false-positive budget on the validation split
    adaptive_count: int = 100  # images attacked per adaptive ε
    adaptive_steps: int = 60
    max_attempts: int = 1000  # images attacked at most per cell (a weak attack yields fewer examples)
    seed: int = 0
    profile: str = "mnist"  # a key of profiles.PROFILES: the ε grid and the attacks' settings


@dataclass(frozen=True)
class Detector:
    """A detector as the report names it, with the inspector that computes its scores."""

    key: str
    title: str
    inspector: Inspector
    ensemble: bool = False  # standardise member scores on the validation split (the μ + k·σ rule)


@dataclass(frozen=True)
class Screen:
    """One row of the tables: a view of a detector's inspection and its threshold."""

    key: str
    title: str
    detector: str
    threshold: Tensor | float  # one for all parts, or one per part (K,)
    mean: Tensor | None = None  # (K,) an ensemble's benign member-score mean, for z = (s − μ)/σ
    std: Tensor | None = None  # (K,)
    member: int | None = None  # a single member of the detector's ensemble

    def view(self, inspection: Inspection) -> Inspection:
        if self.member is not None:
            return inspection.member(self.member)
        if self.mean is not None and self.std is not None:
            return inspection.standardized(self.mean, self.std)
        return inspection

    def raw_thresholds(self) -> Tensor:
        """An ensemble screen's thresholds on the raw member scores s_i: μ_i + k·σ_i."""
        if self.mean is None or self.std is None:
            raise ValueError(f"{self.key} is not an ensemble screen")
        return self.mean + torch.as_tensor(self.threshold, dtype=self.mean.dtype) * self.std


@dataclass
class Evaluation:
    """Everything measured, as plain data (`summary`) plus the scores the plots draw."""

    summary: dict[str, Any]
    benign_scores: dict[str, np.ndarray] = field(default_factory=dict)  # screen → (N,)
    cell_scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # cell → screen → (M,)
    member_scores: dict[str, np.ndarray] = field(default_factory=dict)  # "benign" or cell → (N, K) raw s_i


def standardizer(validation: Inspection) -> tuple[Tensor, Tensor]:
    parts = validation.parts.double()
    return parts.mean(dim=0).float(), parts.std(dim=0).clamp(min=1e-12).float()


def build_screens(bundle: Bundle, detectors: list[Detector], validation: dict[str, Inspection], budget: float,
                  ) -> list[Screen]:
    """Thresholds at the budget on the validation inspections; the bundle's own thresholds too."""
    screens = []
    for det in detectors:
        if not det.ensemble:
            screens.append(Screen(det.key, det.title, det.key, threshold_at_budget(validation[det.key].score, budget)))
            continue
        mean, std = standardizer(validation[det.key])
        z = validation[det.key].standardized(mean, std)
        screens.append(Screen(det.key, det.title, det.key, threshold_at_budget(z.score, budget), mean, std))
        if det.key != "defed":
            continue
        shipped = (bundle.thresholds.cpu() - mean) / std  # (K,) the bundle's thresholds in z units
        screens.append(Screen("defed-shipped", f"{det.title} (shipped thresholds)", det.key, shipped, mean, std))
        if len(bundle.spec.members) == 1:  # its one member alone would repeat the ensemble's row
            continue
        for i, member in enumerate(bundle.spec.members):
            screens.append(Screen(f"defed-member-{i}", f"Defed member σ={member.sigma:g} alone", det.key,
                                  threshold_at_budget(validation[det.key].member(i).score, budget), member=i))
    return screens


def outcome(screen: Screen, inspection: Inspection, labels: Tensor) -> tuple[float, float]:
    """(flagged rate, accuracy of the final label) of one screen on labelled images."""
    flagged, final = screen.view(inspection).decide(screen.threshold)
    return float(flagged.double().mean()), float((final == labels).double().mean())


def threshold_record(t: Tensor | float) -> float | list[float]:
    return t.tolist() if isinstance(t, Tensor) else t


def run_evaluation(bundle: Bundle, validation: ImageSet, test: ImageSet, detectors: list[Detector],
                   plan: EvaluationPlan) -> Evaluation:
    started = time.monotonic()
    seconds: dict[str, float] = {}
    ev = Evaluation(summary={"plan": asdict(plan), "validation": {"images": len(validation)}})

    x_val = to_tensor(validation.images)  # (V, C, H, W)
    val = {d.key: inspect_all(d.inspector, x_val) for d in tqdm(detectors, desc="validation split", leave=False)}
    screens = build_screens(bundle, detectors, val, plan.budget)
    y_val = torch.from_numpy(validation.labels)
    seconds["validation"] = round(time.monotonic() - started, 1)

    order = np.random.default_rng(plan.seed).permutation(len(test))
    x_test, y_test = to_tensor(test.images[order]), torch.from_numpy(test.labels[order])  # seeded order
    x_ben, y_ben = x_test[: plan.benign], y_test[: plan.benign]
    ben = {d.key: inspect_all(d.inspector, x_ben) for d in tqdm(detectors, desc="benign test images", leave=False)}
    rows = []
    for s in screens:
        val_fpr, _ = outcome(s, val[s.detector], y_val)
        test_fpr, benign_acc = outcome(s, ben[s.detector], y_ben)
        ev.benign_scores[s.key] = s.view(ben[s.detector]).score.numpy()
        rows.append({"key": s.key, "title": s.title, "threshold": threshold_record(s.threshold),
                     "validation_fpr": val_fpr, "test_fpr": test_fpr, "benign_accuracy": benign_acc})
    ev.member_scores["benign"] = ben["defed"].parts.numpy()
    ev.summary["screens"] = rows
    ev.summary["benign_images"] = len(y_ben)
    seconds["benign"] = round(time.monotonic() - started - sum(seconds.values()), 1)

    cells = []
    profile = PROFILES[plan.profile]
    for spec in tqdm(profile.grid(plan.attacks, plan.seed), desc="attack cells"):
        t0 = time.monotonic()
        adv = attack_until(bundle.classifier, x_test, y_test, spec, plan.per_cell, num_classes=len(bundle.classes),
                           max_attempts=plan.max_attempts, settings=profile.attacks)
        cells.append({**measure_cell(adv, detectors, screens, ev), "seconds": round(time.monotonic() - t0, 1)})
    ev.summary["cells"] = cells
    seconds["attacks"] = round(sum(c["seconds"] for c in cells), 1)

    t0 = time.monotonic()
    ev.summary["adaptive"] = adaptive_cells(bundle, detectors, screens, x_test, y_test, plan)
    seconds["adaptive"] = round(time.monotonic() - t0, 1)
    seconds["total"] = round(time.monotonic() - started, 1)
    ev.summary["seconds"] = seconds
    return ev


def measure_cell(adv: AdversarialSet, detectors: list[Detector], screens: list[Screen], ev: Evaluation,
                 ) -> dict[str, Any]:
    """Every screen on one cell's adversarial examples; their scores are kept in `ev` for the plots."""
    spec, some = adv.spec, len(adv) > 0
    inspected = {d.key: inspect_all(d.inspector, adv.adversarial) for d in detectors}
    results = {}
    for s in screens:
        view = s.view(inspected[s.detector])
        flagged, final = view.decide(s.threshold)
        ev.cell_scores.setdefault(spec.label, {})[s.key] = view.score.numpy()
        results[s.key] = {
            "detection_rate": float(flagged.double().mean()) if some else None,
            "auc": roc_auc(ev.benign_scores[s.key], view.score) if some else None,
            "adversarial_accuracy": float((final == adv.labels).double().mean()) if some else None,
        }
    ev.member_scores[spec.label] = inspected["defed"].parts.numpy()
    return {
        "attack": spec.name, "label": spec.label, "norm": spec.norm, "eps": spec.eps, "eps_text": spec.budget,
        "white_box": spec.name in WHITE_BOX, "attempted": adv.attempted, "adversarials": len(adv),
        "success_rate": adv.success_rate,
        "median_linf": float(adv.perturbation("linf").median()) if some else None,
        "median_l2": float(adv.perturbation("l2").median()) if some else None,
        "results": results,
    }


def adaptive_cells(bundle: Bundle, detectors: list[Detector], screens: list[Screen], x: Tensor, y: Tensor,
                   plan: EvaluationPlan) -> list[dict[str, Any]]:
    """The defence-aware PGD at every ε, judged at the budget thresholds and at the shipped ones."""
    if plan.adaptive_count <= 0:
        return []
    correct = predict_labels(bundle.classifier, x) == y
    x, y = x[correct][: plan.adaptive_count], y[correct][: plan.adaptive_count]
    defed = next(d for d in detectors if d.key == "defed")
    by_key = {s.key: s for s in screens}
    budget, shipped = by_key["defed"], by_key["defed-shipped"]
    # The attacker aims under both calibrations at once: the lower raw threshold of each member.
    aimed = torch.minimum(budget.raw_thresholds(), shipped.raw_thresholds())  # (K,)
    rows = []
    for spec in PROFILES[plan.profile].adaptive_specs(plan.adaptive_steps, plan.seed):
        result = defence_aware_pgd(bundle.classifier, bundle.denoisers, bundle.alpha, aimed, x, y, spec)
        inspection = inspect_all(defed.inspector, result.adversarial)
        row: dict[str, Any] = {"label": spec.label, "norm": spec.norm, "eps": spec.eps, "eps_text": spec.eps_text,
                               "attempted": len(y), "steps": spec.steps,
                               "evaded_as_attacked": float(result.evaded.double().mean())}
        for screen in (budget, shipped):
            flagged, final = screen.view(inspection).decide(screen.threshold)
            fooled = inspection.passed_label != result.labels  # f(x') ≠ y
            name = "budget" if screen is budget else "shipped"
            row[f"success_{name}"] = float((fooled & ~flagged).double().mean())
            row[f"detection_{name}"] = float(flagged.double().mean())
            row[f"label_wrong_{name}"] = float((final != result.labels).double().mean())
        rows.append(row)
    return rows
