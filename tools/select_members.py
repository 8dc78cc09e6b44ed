"""Choose a preset's ensemble (members, σ, score alpha, threshold rule) by measurement on the validation split.

The 5,000 validation images (never trained on) are halved by a seeded permutation: one half
calibrates thresholds, the other measures the false-positive rate and is attacked (FGSM,
PGD-L∞, PGD-L2 at the preset's budgets) to measure detection. The test set is never read.

    python tools/select_members.py --preset mnist --data ../shared/datasets/mnist.npz --out runs/selection
    python tools/select_members.py --preset cifar10 --data ../shared/datasets/cifar10-jpeg.npz \
        --out runs/cifar10.checkpoints --sigmas 4,8,16,32

Candidate members are trained with the preset's denoiser recipe unless --epochs or
--images-per-epoch override it; then their checkpoints (and the classifier's) are the ones
`defed train bundle --preset NAME --checkpoints DIR` resumes, so the chosen members are not
trained twice.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defed_core.attacks import AttackSpec, successful_adversarials
from defed_core.bundle import Bundle
from defed_core.calibration import calibrate
from defed_core.data import to_tensor
from defed_core.denoiser import DenoiserConfig
from defed_core.ensemble import member_scores, run_members
from defed_core.pipeline import assemble, dataset_record, load_splits
from defed_core.presets import get_preset
from defed_core.training import train_classifier, train_denoiser

ATTACKS = {
    "mnist": [AttackSpec("fgsm", 0.3), AttackSpec("pgd-linf", 0.3), AttackSpec("pgd-l2", 2.0)],
    # The budgets of the CIFAR-10 report's middle column; PGD steps scaled to ε as usual.
    "cifar10": [
        AttackSpec("fgsm", 8 / 255),
        AttackSpec("pgd-linf", 8 / 255, step_size=1 / 255),
        AttackSpec("pgd-l2", 0.5),
    ],
}
RULES = [("fpr", 0.005), ("fpr", 0.01), ("fpr", 0.02), ("fpr", 0.04), ("mean_std", 2.0), ("mean_std", 3.0)]
ALPHAS = [1.0, 0.1, 0.03, 0.01, 0.003, 0.0]


@torch.inference_mode()
def score_terms(bundle: Bundle, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CE(f(D_i(x)), argmax f(x)) and mean((D_i(x) − x)²) per image and member: two (N, K) tensors."""
    ces, mses = [], []
    for start in range(0, len(x), 500):
        batch = x[start : start + 500]
        out = run_members(bundle.classifier, bundle.denoisers, batch)
        ces.append(member_scores(out, batch, alpha=1.0) - member_scores(out, batch, alpha=0.0))
        mses.append(member_scores(out, batch, alpha=0.0))
    return torch.cat(ces), torch.cat(mses)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="mnist", choices=sorted(ATTACKS))
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="runs/selection")
    ap.add_argument("--sigmas", default="0,20,40,80,120")
    ap.add_argument("--epochs", type=int, help="denoiser epochs (default: the preset's)")
    ap.add_argument("--images-per-epoch", type=int, help="denoiser images per epoch (default: the preset's)")
    ap.add_argument("--alpha", type=float, help="the CE weight of the denoisers' training loss (default: the preset's)")
    ap.add_argument("--edge", choices=["laplacian", "sobel"], help="the members' edge operator (default: the preset's)")
    ap.add_argument("--attacked", type=int, default=600)
    args = ap.parse_args()
    out = Path(args.out)
    device = torch.device("cpu")
    preset = get_preset(args.preset)
    attacks = ATTACKS[args.preset]
    splits, validation = load_splits(args.data, preset)
    classifier = train_classifier(
        preset.classifier,
        preset.classifier_training,
        validation.train,
        validation.validation,
        out / "classifier.pt",
        device,
    )
    sigmas = [float(s) for s in args.sigmas.split(",")]
    denoisers = []
    for sigma in sigmas:
        training = replace(
            preset.denoiser_training(sigma),
            epochs=args.epochs or preset.denoiser_epochs,
            images_per_epoch=args.images_per_epoch or preset.denoiser_images_per_epoch,
            alpha=preset.alpha if args.alpha is None else args.alpha,
        )
        denoisers.append(
            (
                sigma,
                train_denoiser(
                    DenoiserConfig(preset.input_shape[0], args.edge or preset.edge, preset.architecture),
                    training,
                    classifier,
                    validation.train,
                    validation.validation,
                    out / f"denoiser-sigma{sigma:g}.pt",
                    device,
                ),
            )
        )
    bundle = assemble(
        "selection",
        "0",
        preset.classifier,
        classifier,
        denoisers,
        1.0,
        splits.train.classes,
        dataset_record(args.data, splits, validation),
        {},
        device,
    )

    halves = np.random.default_rng(1).permutation(len(validation.validation))
    calib = validation.validation.subset(np.sort(halves[:2500]))
    held = validation.validation.subset(np.sort(halves[2500:]))
    x_held = to_tensor(held.images[: args.attacked])
    y_held = torch.from_numpy(held.labels[: args.attacked])
    sets = {"calibration": to_tensor(calib.images), "held-out": to_tensor(held.images)}
    for spec in attacks:
        adv, _, _ = successful_adversarials(classifier, x_held, y_held, spec)
        sets[spec.label] = adv
        print(f"{spec.label}: {len(adv)} successful adversarial examples", flush=True)
    # The two terms of every member's score, kept apart so that alpha can be chosen afterwards.
    terms = {name: score_terms(bundle, x) for name, x in sets.items()}  # name → (CE, MSE), each (N, S)

    rows: list[dict[str, Any]] = []
    for alpha in ALPHAS:
        scores = {name: alpha * ce + mse for name, (ce, mse) in terms.items()}
        for k in (1, 2, 3):
            for combo in itertools.combinations(range(len(sigmas)), k):
                cols = list(combo)
                for rule, param in RULES:
                    cal = calibrate(scores["calibration"][:, cols], rule, k=param, target_fpr=param)  # type: ignore[arg-type]
                    thr = torch.tensor(cal.thresholds, dtype=torch.float32)
                    flagged = {name: float((s[:, cols] > thr).any(1).float().mean()) for name, s in scores.items()}
                    det = {a.label: flagged[a.label] for a in attacks}
                    rows.append(
                        {
                            "sigmas": [sigmas[c] for c in cols],
                            "alpha": alpha,
                            "rule": rule,
                            "param": param,
                            "held_out_fpr": flagged["held-out"],
                            "detection": det,
                            "min_detection": min(det.values()),
                        }
                    )
    rows.sort(key=lambda r: (-r["min_detection"], r["held_out_fpr"]))
    (out / "selection.json").write_text(json.dumps(rows, indent=2))
    print(
        f"{'sigmas':<18} {'alpha':>6} {'rule':<9} {'param':>6} {'FPR':>6}  "
        + "  ".join(f"{a.label:>14}" for a in attacks)
    )
    for r in rows[:40]:
        print(
            f"{','.join(f'{s:g}' for s in r['sigmas']):<18} {r['alpha']:>6g} {r['rule']:<9} {r['param']:>6g} "
            f"{r['held_out_fpr']:>6.3f}  "
            + "  ".join(f"{r['detection'][a.label]:>14.3f}" for a in attacks)
        )


if __name__ == "__main__":
    main()
