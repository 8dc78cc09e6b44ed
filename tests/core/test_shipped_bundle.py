"""The default MNIST bundle shipped inside the package."""

import json

import torch

from defed_core import Bundle
from defed_core.bundle import default_bundle_path, shipped_bundles
from defed_core.data import load_sample


def test_mnist_is_shipped_and_loads() -> None:
    assert "mnist" in shipped_bundles()
    bundle = Bundle.load_default("mnist", device="cpu")
    assert bundle.input_shape == (1, 28, 28) and bundle.classes == [str(d) for d in range(10)]
    assert len(bundle.spec.members) == len(bundle.thresholds) >= 2


def test_calibrated_on_the_held_out_validation_split() -> None:
    doc = json.loads((default_bundle_path("mnist") / "bundle.json").read_text())
    origin = doc["calibration"]["origin"]
    assert origin["split"] == "validation" and origin == {"split": "validation", **doc["dataset"]["validation"]}
    assert doc["calibration"]["images"] == doc["dataset"]["validation"]["size"] == 5000


def test_accuracy_and_false_positives_on_the_shipped_sample() -> None:
    """256 real MNIST test images: labels right on ≥ 98 %, at most 3 % flagged as adversarial."""
    sample = load_sample("mnist")
    d = Bundle.load_default("mnist", device="cpu").predict(sample.images)
    assert (d.original_label.numpy() == sample.labels).mean() >= 0.98
    assert int(d.adversarial.sum()) <= 8


def test_flags_heavily_perturbed_digits() -> None:
    """A digit with a ±0.3 sign pattern on every pixel (an FGSM-sized change) is flagged."""
    sample = load_sample("mnist")
    x = torch.from_numpy(sample.images[:32]).permute(0, 3, 1, 2).float() / 255
    sign = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    d = Bundle.load_default("mnist", device="cpu").predict((x + 0.3 * sign).clamp(0, 1))
    assert d.adversarial.float().mean() >= 0.95


def test_cifar10_is_shipped_calibrated_on_validation_and_accurate_on_its_sample() -> None:
    """The colour bundle: 256 real JPEG test images, labels right on ≥ 84 %, at most 6 % flagged."""
    assert "cifar10" in shipped_bundles()
    doc = json.loads((default_bundle_path("cifar10") / "bundle.json").read_text())
    assert doc["calibration"]["origin"] == {"split": "validation", **doc["dataset"]["validation"]}
    bundle = Bundle.load_default("cifar10", device="cpu")
    assert bundle.input_shape == (3, 32, 32) and bundle.classes[0] == "airplane"
    sample = load_sample("cifar10")
    d = bundle.predict(sample.images)
    assert (d.original_label.numpy() == sample.labels).mean() >= 0.84
    assert int(d.adversarial.sum()) <= 16
