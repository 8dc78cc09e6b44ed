"""Training on a tiny subset: it learns, checkpoints, resumes, and builds a bundle."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from defed_core import Bundle
from defed_core.checkpoint import Checkpoint, CheckpointError
from defed_core.classifiers import ClassifierConfig
from defed_core.data import ImageSet, Splits, split_validation
from defed_core.denoiser import DenoiserConfig
from defed_core.pipeline import train_bundle
from defed_core.presets import get_preset
from defed_core.training import ClassifierTraining, DenoiserTraining, accuracy, train_classifier, train_denoiser

CPU = torch.device("cpu")


def toy_digits(n: int, seed: int = 0) -> ImageSet:
    """Two easy classes: a bright square at the top-left or the bottom-right, with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.integers(0, 40, (n, 28, 28, 1)).astype(np.uint8)
    for i, y in enumerate(labels):
        r = slice(2, 12) if y == 0 else slice(16, 26)
        images[i, r, r] = 220
    return ImageSet(images, labels.astype(np.int64), [str(d) for d in range(10)])


@pytest.fixture(scope="module")
def split() -> tuple[ImageSet, ImageSet]:
    v = split_validation(toy_digits(600), 100, seed=0)
    return v.train, v.validation


class TestClassifierTraining:
    def test_learns_and_checkpoints(self, split: tuple[ImageSet, ImageSet], tmp_path: Path) -> None:
        train, val = split
        ckpt_path = tmp_path / "c.pt"
        model = train_classifier(
            ClassifierConfig(), ClassifierTraining(epochs=2, batch_size=32), train, val, ckpt_path, CPU
        )
        assert accuracy(model, val, CPU) > 0.9
        ckpt = Checkpoint.load(ckpt_path, "classifier")
        assert ckpt.epochs_done == 2 and ckpt.model_config["kind"] == "lenet5"
        assert ckpt.train_config["epochs"] == 2 and len(ckpt.history) == 2

    def test_resume_continues_to_the_same_weights(
        self, split: tuple[ImageSet, ImageSet], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A run killed after its first epoch's checkpoint, then resumed, ends with an unbroken run's weights."""
        train, val = split
        cfg, training = ClassifierConfig(), ClassifierTraining(epochs=2, batch_size=32)
        unbroken = train_classifier(cfg, training, train, val, tmp_path / "a.pt", CPU)

        original_save = Checkpoint.save

        def save_then_crash(self: Checkpoint, path: Path) -> None:
            original_save(self, path)
            raise KeyboardInterrupt  # the process dies right after the first checkpoint

        monkeypatch.setattr(Checkpoint, "save", save_then_crash)
        with pytest.raises(KeyboardInterrupt):
            train_classifier(cfg, training, train, val, tmp_path / "b.pt", CPU)
        monkeypatch.setattr(Checkpoint, "save", original_save)
        assert Checkpoint.load(tmp_path / "b.pt").epochs_done == 1
        resumed = train_classifier(cfg, training, train, val, tmp_path / "b.pt", CPU)
        for (k, va), vb in zip(unbroken.state_dict().items(), resumed.state_dict().values(), strict=False):
            assert torch.allclose(va, vb, atol=1e-6), k

    def test_other_configuration_refused(self, split: tuple[ImageSet, ImageSet], tmp_path: Path) -> None:
        train, val = split
        train_classifier(
            ClassifierConfig(), ClassifierTraining(epochs=1, batch_size=32), train, val, tmp_path / "c.pt", CPU
        )
        with pytest.raises(CheckpointError, match="another configuration"):
            train_classifier(
                ClassifierConfig(), ClassifierTraining(epochs=1, lr=0.1), train, val, tmp_path / "c.pt", CPU
            )


def test_denoiser_training_lowers_validation_loss(split: tuple[ImageSet, ImageSet], tmp_path: Path) -> None:
    train, val = split
    classifier = train_classifier(
        ClassifierConfig(), ClassifierTraining(epochs=1, batch_size=32), train, val, tmp_path / "c.pt", CPU
    )
    train_denoiser(
        DenoiserConfig(1),
        DenoiserTraining(sigma=40, epochs=2, batch_size=32, images_per_epoch=400),
        classifier,
        train,
        val,
        tmp_path / "d.pt",
        CPU,
    )
    history = Checkpoint.load(tmp_path / "d.pt", "denoiser").history
    assert history[1]["val_loss"] < history[0]["val_loss"]


def test_train_bundle_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The preset pipeline on toy data: a loadable bundle whose calibration meets its target on held-out data."""
    data = toy_digits(700)
    splits = Splits(data.subset(np.arange(600)), data.subset(np.arange(600, 700)))
    monkeypatch.setattr("defed_core.pipeline.load_dataset", lambda *a, **k: splits)
    preset = replace(
        get_preset("mnist"),
        classifier_training=ClassifierTraining(epochs=1, batch_size=32),
        denoiser_epochs=1,
        denoiser_images_per_epoch=64,
        validation_size=200,
        target_fpr=0.05,
    )
    _bundle, summary = train_bundle(preset, "toy.npz", tmp_path / "bundle", tmp_path / "ckpt", CPU)
    loaded = Bundle.load(tmp_path / "bundle", device="cpu")
    assert loaded.spec.calibration.rule == "fpr" and loaded.spec.calibration.images == 200
    assert loaded.spec.dataset["validation"]["size"] == 200
    assert summary["test_accuracy"] > 0.9
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "classifier.pt",
        "denoiser-sigma20.pt",
        "denoiser-sigma60.pt",
    ]
