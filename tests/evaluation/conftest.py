"""Fixtures: a tiny MNIST-format dataset cut from the shipped sample and untrained models for it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from defed_core.bundle import Bundle
from defed_core.classifiers import ClassifierConfig, build_classifier
from defed_core.data import ImageSet, load_dataset, load_sample, split_validation, to_tensor
from defed_core.evaluation.magnet import MagNetTraining, train_magnet
from defed_core.testing import untrained_bundle

VALIDATION = 60


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> None:
    """Small tensors run faster on one thread, and far faster when the machine is busy."""
    torch.set_num_threads(1)


def quick_classifier(train: ImageSet) -> nn.Module:
    """LeNet-5 fitted to the tiny training part in about a second: good enough for attacks to have
    correctly classified images to start from."""
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig("lenet5", 1, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = to_tensor(train.images), torch.from_numpy(train.labels)
    for _ in range(25):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        torch.autograd.backward(loss)
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 training and 56 test images of the shipped MNIST sample, in the packed MNIST format."""
    sample = load_sample("mnist")
    path = tmp_path_factory.mktemp("data") / "tiny-mnist.npz"
    images = sample.images[..., 0]  # (256, 28, 28)
    np.savez(path, x_train=images[:200], y_train=sample.labels[:200], x_test=images[200:], y_test=sample.labels[200:])
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> dict[str, Path]:
    """An untrained bundle recording its validation split, a BaseNet stand-in with the same
    classifier (same seed), and a MagNet autoencoder trained for one epoch."""
    root = tmp_path_factory.mktemp("models")
    split = split_validation(load_dataset(tiny_data).train, VALIDATION, 0)
    classifier = quick_classifier(split.train)
    paths = {"bundle": root / "bundle", "basenet": root / "basenet", "magnet": root / "magnet"}
    for key in ("bundle", "basenet"):
        b = untrained_bundle()
        Bundle(replace(b.spec, dataset={"validation": split.record()}), classifier, b.denoisers).save(paths[key])
    train_magnet(split.train, split.validation, MagNetTraining(epochs=1, batch_size=64), paths["magnet"])
    return paths
