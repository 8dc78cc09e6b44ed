"""The acceptance figures of a bundle on the MNIST test set: accuracy, benign FPR, detection rates.

    python tools/check_bundle.py --bundle mnist --data ../shared/datasets/mnist.npz --attacked 1000
    python tools/check_bundle.py --bundle cifar10 --data ../shared/datasets/cifar10-jpeg.npz --attacked 1000

Detection is measured on successful attacks only (the source image was classified correctly,
the adversarial one is not), made against the bundle's classifier from test images chosen by a
seeded permutation. Thresholds are the bundle's own (calibrated on its validation split).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from defed_core import Bundle
from defed_core.attacks import AttackSpec, successful_adversarials
from defed_core.bundle import resolve_bundle_path
from defed_core.data import load_dataset, to_tensor
from defed_core.pipeline import benign_scores, seeded_indices
from defed_core.training import accuracy

# The budgets each bundle is measured against, by its input channels (1: MNIST, 3: CIFAR-10).
ATTACKS = {
    1: [
        AttackSpec("fgsm", 0.3),
        AttackSpec("pgd-linf", 0.3, steps=40, step_size=0.01),
        AttackSpec("pgd-l2", 2.0, steps=40, step_size=0.1),
    ],
    3: [
        AttackSpec("fgsm", 8 / 255),
        AttackSpec("pgd-linf", 8 / 255, steps=40, step_size=1 / 255),
        AttackSpec("pgd-l2", 0.5, steps=40, step_size=0.025),
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="mnist")
    ap.add_argument("--data", required=True)
    ap.add_argument("--attacked", type=int, default=1000, help="test images to attack per attack")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    started = time.monotonic()
    bundle = Bundle.load(resolve_bundle_path(args.bundle), device="auto")
    test = load_dataset(args.data).test
    scores = benign_scores(bundle, test, desc="benign test set")
    flagged = (scores > bundle.thresholds.cpu()).any(dim=1)
    decision_labels = bundle.predict(test.images[:2000]).label
    figures: dict[str, object] = {
        "bundle": f"{bundle.name} {bundle.version}",
        "test_accuracy": accuracy(bundle.classifier, test, bundle.device),
        "benign_fpr": float(flagged.float().mean()),
        "benign_flagged": int(flagged.sum()),
        "benign_images": len(test),
        "final_label_accuracy_first_2000": float((decision_labels.numpy() == test.labels[:2000]).mean()),
    }
    idx = seeded_indices(len(test), args.attacked, args.seed)
    x, y = to_tensor(test.images[idx]), torch.from_numpy(test.labels[idx])
    for spec in ATTACKS[bundle.input_shape[0]]:
        adv, _, y_true = successful_adversarials(bundle.classifier.cpu(), x, y, spec)
        bundle.classifier.to(bundle.device)
        d = bundle.predict(adv)
        figures[spec.label] = {
            "successful_attacks": len(adv),
            "detection_rate": float(d.adversarial.float().mean()),
            "recovered_label_accuracy": float((d.label == y_true).float().mean()),
        }
    figures["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
