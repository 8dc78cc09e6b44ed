"""Evaluation of the Defed detector: attacks × detectors, baselines, an adaptive attack, a report.

A pure library (tensors and numpy in, numbers and files out); `defed evaluate` drives it.
Needs the `eval` extra for ART, scikit-learn and matplotlib.

    attacks      successful adversarial examples per (attack, ε) cell, via ART
    detectors    Defed, its single members, BaseNet, Feature Squeezing, MagNet-style, no defence
    magnet       the MagNet-style autoencoder: model, training, files
    metrics      ROC, AUC, thresholds at a false-positive budget, detection rates
    adaptive     a defence-aware PGD against the whole Defed pipeline
    profiles     per dataset (MNIST, CIFAR-10): ε grid, attack settings, baselines' settings
    experiment   the run: thresholds on the validation split, every cell measured on test images
    findings     where Defed is ahead of or behind each baseline, in sentences made from the numbers
    report       results.json and results.md;  plots: the PNG figures
"""
