"""Effect of half-precision networks (`model.precision` fp16 / bf16) on the scores and decisions.

    python bench/precision.py --bundle mnist

The torch fast path in float32 is the reference; the same path under autocast in bf16 and fp16 is
compared on the shipped sample of benign test images and on PGD-L2 adversarial examples made from
them: the largest absolute and relative score difference, and how often the flag and the label
agree. This machine has no GPU, so autocast runs on the CPU here; a GPU's half-precision kernels
round differently in detail but to the same number of mantissa bits.
"""

from __future__ import annotations

import argparse

import torch

from defed_core.attacks import AttackSpec, successful_adversarials
from defed_core.bundle import Bundle, resolve_bundle_path
from defed_core.data import load_sample, to_tensor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="mnist")
    args = ap.parse_args()
    path = resolve_bundle_path(args.bundle)
    reference = Bundle.load(path, "cpu", backend="torch")
    sample = load_sample("cifar10" if reference.input_shape[0] == 3 else "mnist")
    x = to_tensor(sample.images)
    eps = 0.5 if reference.input_shape[0] == 3 else 2.0
    adversarial, _, _ = successful_adversarials(
        reference.classifier, x, torch.from_numpy(sample.labels), AttackSpec("pgd-l2", eps)
    )
    print("| precision | images | max abs Δscore | max rel Δscore | flag agreement | label agreement |")
    print("|---|---|---|---|---|---|")
    for precision in ("bf16", "fp16"):
        half = Bundle.load(path, "cpu", backend="torch", precision=precision)
        for name, data in ((f"{len(x)} benign", x), (f"{len(adversarial)} PGD-L2 ε={eps:g}", adversarial)):
            ref, got = reference.predict(data), half.predict(data)
            delta = (got.scores - ref.scores).abs()
            rel = (delta / ref.scores.abs().clamp_min(1e-6)).max()
            flags = (got.adversarial == ref.adversarial).float().mean()
            labels = (got.label == ref.label).float().mean()
            print(
                f"| {precision} | {name} | {float(delta.max()):.1e} | {float(rel):.1%} | {float(flags):.2%} "
                f"| {float(labels):.2%} |"
            )


if __name__ == "__main__":
    main()
