"""Choose the MNIST ensemble (members, σ, threshold rule) by measurement on the validation split.

The 5,000 validation images (never trained on) are halved by a seeded permutation: one half
calibrates thresholds, the other measures the false-positive rate and is attacked (FGSM,
PGD-L∞, PGD-L2) to measure detection. The test set is never read.

    python tools/select_members.py --data ../shared/datasets/mnist.npz --out runs/selection
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from defed_core.attacks import AttackSpec, successful_adversarials
from defed_core.bundle import Bundle
from defed_core.calibration import calibrate
from defed_core.data import to_tensor
from defed_core.denoiser import DenoiserConfig
from defed_core.pipeline import assemble, benign_scores, dataset_record, load_splits
from defed_core.presets import get_preset
from defed_core.training import DenoiserTraining, train_classifier, train_denoiser

ATTACKS = [AttackSpec("fgsm", 0.3), AttackSpec("pgd-linf", 0.3), AttackSpec("pgd-l2", 2.0)]
RULES = [("fpr", 0.005), ("fpr", 0.01), ("mean_std", 2.0), ("mean_std", 3.0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="runs/selection")
    ap.add_argument("--sigmas", default="0,20,40,80,120")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--images-per-epoch", type=int, default=20000)
    ap.add_argument("--attacked", type=int, default=600)
    args = ap.parse_args()
    out = Path(args.out)
    device = torch.device("cpu")
    preset = get_preset("mnist")
    splits, validation = load_splits(args.data, preset)
    classifier = train_classifier(preset.classifier, preset.classifier_training, validation.train,
                                  validation.validation, out / "classifier.pt", device)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    denoisers = []
    for sigma in sigmas:
        training = DenoiserTraining(sigma=sigma, epochs=args.epochs, images_per_epoch=args.images_per_epoch)
        denoisers.append((sigma, train_denoiser(DenoiserConfig(1, preset.edge, "defed"), training, classifier,
                                                validation.train, validation.validation,
                                                out / f"denoiser-sigma{sigma:g}.pt", device)))
    bundle = assemble("selection", "0", preset.classifier, classifier, denoisers, 1.0, splits.train.classes,
                      dataset_record(args.data, splits, validation), {}, device)

    halves = np.random.default_rng(1).permutation(len(validation.validation))
    calib = validation.validation.subset(np.sort(halves[:2500]))
    held = validation.validation.subset(np.sort(halves[2500:]))
    calib_scores = benign_scores(bundle, calib)  # (2500, S)
    held_scores = benign_scores(bundle, held)
    x_held = to_tensor(held.images[: args.attacked])
    y_held = torch.from_numpy(held.labels[: args.attacked])
    adv_scores = {}
    for spec in ATTACKS:
        adv, _, _ = successful_adversarials(classifier, x_held, y_held, spec)
        adv_scores[spec.label] = bundle.scores(adv).cpu()
        print(f"{spec.label}: {len(adv)} successful adversarial examples", flush=True)

    rows = []
    for k in (1, 2, 3):
        for combo in itertools.combinations(range(len(sigmas)), k):
            cols = list(combo)
            for rule, param in RULES:
                cal = calibrate(calib_scores[:, cols], rule, k=param, target_fpr=param)  # type: ignore[arg-type]
                thr = torch.tensor(cal.thresholds, dtype=torch.float32)
                fpr = float((held_scores[:, cols] > thr).any(1).float().mean())
                det = {name: float((s[:, cols] > thr).any(1).float().mean()) for name, s in adv_scores.items()}
                rows.append({"sigmas": [sigmas[c] for c in cols], "rule": rule, "param": param,
                             "held_out_fpr": fpr, "detection": det, "min_detection": min(det.values())})
    rows.sort(key=lambda r: (-r["min_detection"], r["held_out_fpr"]))
    (out / "selection.json").write_text(json.dumps(rows, indent=2))
    print(f"{'sigmas':<18} {'rule':<9} {'param':>6} {'FPR':>6}  " + "  ".join(f"{a.label:>14}" for a in ATTACKS))
    for r in rows[:40]:
        print(f"{','.join(f'{s:g}' for s in r['sigmas']):<18} {r['rule']:<9} {r['param']:>6g} {r['held_out_fpr']:>6.3f}  "
              + "  ".join(f"{r['detection'][a.label]:>14.3f}" for a in ATTACKS))


if __name__ == "__main__":
    main()
