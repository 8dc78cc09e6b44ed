"""Helpers for tests of code built on defed_core: small untrained bundles made in milliseconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from defed_core.bundle import Bundle, BundleSpec, Member
from defed_core.calibration import calibrate
from defed_core.classifiers import ClassifierConfig, build_classifier
from defed_core.denoiser import Denoiser, DenoiserConfig


def untrained_bundle(
    path: str | Path | None = None,
    *,
    input_shape: tuple[int, int, int] = (1, 28, 28),
    sigmas: tuple[float, ...] = (20.0, 40.0),
    seed: int = 0,
) -> Bundle:
    """A bundle with random weights, calibrated on random images; saved to `path` if given.

    Its decisions mean nothing, but its shapes, files and metadata are those of a real one.
    """
    torch.manual_seed(seed)
    c = input_shape[0]
    classifier_config = ClassifierConfig("lenet5" if input_shape == (1, 28, 28) else "vgg", c, 10)
    members = [Member(s, DenoiserConfig(c, "laplacian", "defed")) for s in sigmas]
    denoisers = [Denoiser(m.config) for m in members]
    classifier = build_classifier(classifier_config)
    provisional = calibrate(torch.zeros(2, len(members)) + torch.tensor([[0.0], [1.0]]), "mean_std")
    spec = BundleSpec(
        name="untrained",
        version="0.0.0",
        input_shape=input_shape,
        classes=[str(i) for i in range(10)],
        classifier=classifier_config,
        members=members,
        alpha=1.0,
        calibration=provisional,
    )
    bundle = Bundle(spec, classifier, denoisers, "cpu")
    benign = torch.rand(64, *input_shape, generator=torch.Generator().manual_seed(seed))
    bundle = bundle.with_calibration(calibrate(bundle.scores(benign).cpu(), "mean_std", k=3.0))
    if path is not None:
        bundle.save(path)
    return bundle


def write_random_mnist(path: str | Path, train: int, test: int, seed: int = 0) -> Path:
    """A file in the packed-MNIST layout (mnist.npz) holding random digits and labels."""
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, train),
        x_test=rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, test),
    )
    return Path(path)
