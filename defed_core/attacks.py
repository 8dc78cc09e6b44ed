"""Adversarial examples made with ART: moved to `defed_core.evaluation.attacks`.

Kept so that existing imports (`from defed_core.attacks import AttackSpec, ...`) still work.
"""

from defed_core.evaluation.attacks import (
    AttackSpec,
    art_classifier,
    build_attack,
    predict_labels,
    successful_adversarials,
)

__all__ = ["AttackSpec", "art_classifier", "build_attack", "predict_labels", "successful_adversarials"]
