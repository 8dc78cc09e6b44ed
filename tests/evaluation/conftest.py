"""Fixtures: tiny MNIST- and CIFAR-10-format datasets and untrained models for them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from defed_core.bundle import Bundle
from defed_core.classifiers import ClassifierConfig, build_classifier
from defed_core.data import ImageSet, decode_jpeg_blob, load_dataset, load_sample, split_validation, to_tensor
from defed_core.evaluation.attacks import predict_labels
from defed_core.evaluation.magnet import MagNetTraining, train_magnet
from defed_core.testing import untrained_bundle

VALIDATION = 60
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


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


@torch.no_grad()
def fit_batch_norm(model: nn.Module, x: torch.Tensor) -> None:
    """Set BatchNorm statistics from x: an untrained VGG then tells images apart instead of
    putting every one in the same class."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the one pass
    model.train()
    model(x)
    model.eval()


def jpeg_pack(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 (N, 32, 32, 3) as concatenated JPEG files (quality 75, 4:2:0) and their offsets."""
    files = [cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 75])[1].ravel() for img in images]
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in files])]).astype(np.int64)
    return np.concatenate(files), offsets


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CIFAR-10-format file of 200 + 16 smooth random colour images stored as JPEG, labelled by the
    untrained 3×32×32 bundle's own classifier (so every test image starts correctly classified), that
    bundle and a BaseNet stand-in with the same classifier, both recording the validation split, and
    a flat (CIFAR-10 layout) MagNet autoencoder trained for one epoch."""
    root = tmp_path_factory.mktemp("cifar")
    bundle = untrained_bundle(input_shape=(3, 32, 32))
    rng = np.random.default_rng(0)
    # 16 test images: an attack chunk takes all of them, so every cell attacks at most 16.
    coarse = rng.integers(0, 256, (216, 8, 8, 3), dtype=np.uint8)
    images = np.stack([cv2.resize(c, (32, 32), interpolation=cv2.INTER_CUBIC) for c in coarse])  # (216, 32, 32, 3)
    blob, offsets = jpeg_pack(images)
    x = to_tensor(decode_jpeg_blob(blob, offsets))  # what the loader will read
    fit_batch_norm(bundle.classifier, x)
    labels = predict_labels(bundle.classifier, x).numpy()
    train_blob, train_off = jpeg_pack(images[:200])
    test_blob, test_off = jpeg_pack(images[200:])
    data = root / "tiny-cifar10-jpeg.npz"
    np.savez(data, train_jpeg=train_blob, train_offsets=train_off, y_train=labels[:200], test_jpeg=test_blob,
             test_offsets=test_off, y_test=labels[200:], classes=np.array(CIFAR_CLASSES))
    split = split_validation(load_dataset(data).train, VALIDATION, 0)
    paths = {"data": data, "bundle": root / "bundle", "basenet": root / "basenet", "magnet": root / "magnet"}
    for key in ("bundle", "basenet"):
        Bundle(replace(bundle.spec, dataset={"validation": split.record()}), bundle.classifier,
               bundle.denoisers).save(paths[key])
    train_magnet(split.train, split.validation, MagNetTraining(epochs=1, batch_size=64), paths["magnet"],
                 pooled=False)
    return paths
