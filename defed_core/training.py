"""Training the classifier and the denoisers, with resumable per-epoch checkpoints.

A run whose checkpoint file already exists continues after the last finished epoch (its
configuration must match, except for the number of epochs, which may grow). Each epoch's
shuffling and noise come from `seed + epoch`, so a resumed run repeats what an unbroken one does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from defed_core.checkpoint import Checkpoint, CheckpointError, ModelKind
from defed_core.classifiers import ClassifierConfig, build_classifier
from defed_core.data import ImageSet, to_tensor
from defed_core.denoiser import Denoiser, DenoiserConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierTraining:
    epochs: int = 12
    batch_size: int = 128
    lr: float = 1e-3
    shift: int = 2  # random translation (pixels) as augmentation; 0 turns it off
    # One random offset for each image (a random crop of the padded image) rather than one for the
    # whole batch: many more distinct views per epoch. The mnist bundle was trained per batch.
    shift_each_image: bool = False
    flip: bool = False  # random horizontal flips (natural images, not digits)
    # Adam suits the small LeNet; the BatchNorm VGG generalises better with SGD + momentum + weight decay.
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class DenoiserTraining:
    sigma: float  # noise level on the 0–255 scale
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    alpha: float = 1.0
    images_per_epoch: int | None = None  # a fresh random subset each epoch; None = all
    seed: int = 0


def batches(
    images: ImageSet, batch_size: int, rng: np.random.Generator | None, limit: int | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Float (B, C, H, W) batches with labels, shuffled when rng is given."""
    order = rng.permutation(len(images)) if rng is not None else np.arange(len(images))
    order = order[:limit] if limit else order
    for start in range(0, len(order), batch_size):
        idx = np.sort(order[start : start + batch_size]) if rng is None else order[start : start + batch_size]
        yield to_tensor(images.images[idx]), torch.from_numpy(images.labels[idx])


def augment(x: Tensor, shift: int, flip: bool, gen: torch.Generator, each_image: bool = False) -> Tensor:
    """Random translation by up to `shift` pixels (zero fill), per batch or per image, and optional
    horizontal flips."""
    if shift:
        n, c, h, w = x.shape
        padded = F.pad(x, (shift, shift, shift, shift))
        if each_image:
            dy, dx = torch.randint(0, 2 * shift + 1, (2, n), generator=gen)
            rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
            x = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
        else:
            dy0, dx0 = torch.randint(0, 2 * shift + 1, (2,), generator=gen).tolist()
            x = padded[:, :, dy0 : dy0 + h, dx0 : dx0 + w]
    if flip:
        mask = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


def resume(
    path: Path, kind: ModelKind, model_config: dict[str, Any], train_config: dict[str, Any]
) -> Checkpoint | None:
    """The checkpoint to continue from, or None to start afresh."""
    if not path.exists():
        return None
    ckpt = Checkpoint.load(path, kind)
    same = {k: v for k, v in ckpt.train_config.items() if k != "epochs"} == {
        k: v for k, v in train_config.items() if k != "epochs"
    }
    if ckpt.model_config != model_config or not same:
        raise CheckpointError(f"{path}: holds a run with another configuration; remove it or choose another path")
    return ckpt


@torch.inference_mode()
def accuracy(classifier: nn.Module, images: ImageSet, device: torch.device, batch_size: int = 1000) -> float:
    classifier.eval()
    correct = 0
    for x, y in batches(images, batch_size, None):
        correct += int((classifier(x.to(device)).argmax(1).cpu() == y).sum())
    return correct / max(1, len(images))


def train_classifier(
    config: ClassifierConfig,
    training: ClassifierTraining,
    train: ImageSet,
    validation: ImageSet,
    checkpoint: Path,
    device: torch.device,
) -> nn.Module:
    """Cross-entropy training with Adam or SGD (Nesterov momentum) and a cosine learning-rate schedule."""
    torch.manual_seed(training.seed)  # the initial weights, so a run is repeatable
    model = build_classifier(config).to(device)
    opt = classifier_optimizer(model, training)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=training.epochs)
    ckpt = resume(checkpoint, "classifier", config.to_dict(), asdict(training)) or Checkpoint(
        "classifier", config.to_dict(), asdict(training), {}
    )
    if ckpt.epochs_done:
        model.load_state_dict(ckpt.state_dict)
        opt.load_state_dict(ckpt.optimizer["optimizer"])
        sched.load_state_dict(ckpt.optimizer["schedule"])
    for epoch in range(ckpt.epochs_done, training.epochs):
        model.train()
        rng = np.random.default_rng(training.seed + epoch)
        gen = torch.Generator().manual_seed(training.seed + epoch)
        bar = tqdm(
            batches(train, training.batch_size, rng),
            total=-(-len(train) // training.batch_size),
            desc=f"classifier epoch {epoch + 1}/{training.epochs}",
            leave=False,
        )
        for x, y in bar:
            x = augment(x, training.shift, training.flip, gen, training.shift_each_image).to(device)
            loss = F.cross_entropy(model(x), y.to(device), label_smoothing=training.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch does not annotate backward
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        sched.step()
        val_acc = accuracy(model, validation, device)
        log.info("classifier epoch %d/%d: validation accuracy %.4f", epoch + 1, training.epochs, val_acc)
        tqdm.write(f"classifier epoch {epoch + 1}/{training.epochs}: validation accuracy {val_acc:.4f}")
        ckpt.history.append({"epoch": epoch + 1, "val_accuracy": val_acc})
        ckpt.state_dict = {k: v.cpu() for k, v in model.state_dict().items()}
        ckpt.optimizer = {"optimizer": opt.state_dict(), "schedule": sched.state_dict()}
        ckpt.epochs_done = epoch + 1
        ckpt.save(checkpoint)
    model.load_state_dict(ckpt.state_dict)
    return model.eval()


def classifier_optimizer(model: nn.Module, training: ClassifierTraining) -> torch.optim.Optimizer:
    if training.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=training.lr, momentum=0.9, nesterov=True, weight_decay=training.weight_decay
        )
    return torch.optim.Adam(model.parameters(), lr=training.lr, weight_decay=training.weight_decay)


def add_noise(x: Tensor, sigma: float, gen: torch.Generator | None = None) -> Tensor:
    """x̃ = clamp(x + N(0, (σ/255)²), 0, 1)."""
    if sigma == 0:
        return x
    noise = torch.randn(x.shape, generator=gen, device="cpu").to(x.device)
    return (x + noise * (sigma / 255.0)).clamp(0.0, 1.0)


def denoiser_loss(
    denoiser: nn.Module, classifier: nn.Module, x: Tensor, y: Tensor, noisy: Tensor, alpha: float
) -> Tensor:
    """alpha · CE(f(D(x̃)), y) + MSE(D(x̃), x), the classifier frozen."""
    out = denoiser(noisy)
    return alpha * F.cross_entropy(classifier(out), y) + F.mse_loss(out, x)


@torch.no_grad()
def denoiser_validation_loss(
    denoiser: nn.Module,
    classifier: nn.Module,
    validation: ImageSet,
    training: DenoiserTraining,
    device: torch.device,
    limit: int = 2000,
) -> float:
    denoiser.eval()
    gen = torch.Generator().manual_seed(training.seed)
    total, count = 0.0, 0
    for x, y in batches(validation, 500, None, limit):
        x, y = x.to(device), y.to(device)
        noisy = add_noise(x, training.sigma, gen)
        total += float(denoiser_loss(denoiser, classifier, x, y, noisy, training.alpha)) * len(y)
        count += len(y)
    return total / max(1, count)


def train_denoiser(
    config: DenoiserConfig,
    training: DenoiserTraining,
    classifier: nn.Module,
    train: ImageSet,
    validation: ImageSet,
    checkpoint: Path,
    device: torch.device,
) -> Denoiser:
    """Train one denoiser at noise level σ against the frozen classifier."""
    classifier = classifier.to(device).eval()
    for p in classifier.parameters():
        p.requires_grad_(False)
    torch.manual_seed(training.seed)  # the initial weights, so a run is repeatable
    model = Denoiser(config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=training.lr)
    ckpt = resume(checkpoint, "denoiser", config.to_dict(), asdict(training)) or Checkpoint(
        "denoiser", config.to_dict(), asdict(training), {}
    )
    if ckpt.epochs_done:
        model.load_state_dict(ckpt.state_dict)
        opt.load_state_dict(ckpt.optimizer["adam"])
    per_epoch = min(training.images_per_epoch or len(train), len(train))
    for epoch in range(ckpt.epochs_done, training.epochs):
        model.train()
        rng = np.random.default_rng(training.seed + epoch)
        gen = torch.Generator().manual_seed(training.seed + epoch)
        bar = tqdm(
            batches(train, training.batch_size, rng, per_epoch),
            total=-(-per_epoch // training.batch_size),
            desc=f"denoiser σ={training.sigma:g} epoch {epoch + 1}/{training.epochs}",
            leave=False,
        )
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            loss = denoiser_loss(model, classifier, x, y, add_noise(x, training.sigma, gen), training.alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch does not annotate backward
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        val_loss = denoiser_validation_loss(model, classifier, validation, training, device)
        tqdm.write(f"denoiser σ={training.sigma:g} epoch {epoch + 1}/{training.epochs}: validation loss {val_loss:.5f}")
        log.info("denoiser sigma=%g epoch %d: validation loss %.5f", training.sigma, epoch + 1, val_loss)
        ckpt.history.append({"epoch": epoch + 1, "val_loss": val_loss})
        ckpt.state_dict = {k: v.cpu() for k, v in model.state_dict().items()}
        ckpt.optimizer = {"adam": opt.state_dict()}
        ckpt.epochs_done = epoch + 1
        ckpt.save(checkpoint)
    model.load_state_dict(ckpt.state_dict)
    return model.eval()
