"""From a dataset to a calibrated bundle: the whole job of `defed train bundle`.

Every stage checkpoints under one folder, so a broken run picks up where it stopped.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from defed_core.bundle import Bundle, BundleSpec, Member
from defed_core.calibration import Calibration, Rule, calibrate
from defed_core.classifiers import ClassifierConfig
from defed_core.data import ImageSet, Splits, ValidationSplit, load_dataset, split_validation, to_tensor
from defed_core.denoiser import Denoiser, DenoiserConfig
from defed_core.presets import Preset
from defed_core.training import accuracy, train_classifier, train_denoiser

log = logging.getLogger(__name__)


def load_splits(data: str | Path, preset: Preset) -> tuple[Splits, ValidationSplit]:
    c, h, w = preset.input_shape
    splits = load_dataset(data, channels=c, size=(h, w))
    if splits.train.shape != preset.input_shape:
        raise ValueError(
            f"{data}: images are {splits.train.shape}, preset {preset.name!r} expects {preset.input_shape}"
        )
    return splits, split_validation(splits.train, preset.validation_size, preset.seed)


@torch.inference_mode()
def benign_scores(bundle: Bundle, images: ImageSet, batch_size: int = 500, desc: str = "scoring") -> Tensor:
    """Member scores (N, K) of every image, on the CPU."""
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False):
        x = to_tensor(images.images[start : start + batch_size])
        out.append(bundle.scores(x).cpu())
    return torch.cat(out)


def calibrate_bundle(bundle: Bundle, validation: ValidationSplit, rule: Rule, k: float, target_fpr: float) -> Bundle:
    """Thresholds from the validation split (held-out benign images)."""
    scores = benign_scores(bundle, validation.validation, desc="calibrating")
    origin = {"split": "validation", **validation.record()}
    return bundle.with_calibration(calibrate(scores, rule, k=k, target_fpr=target_fpr, origin=origin))


def assemble(
    name: str,
    version: str,
    classifier_config: ClassifierConfig,
    classifier: nn.Module,
    members: list[tuple[float, Denoiser]],
    alpha: float,
    classes: list[str],
    dataset: dict[str, Any],
    training: dict[str, Any],
    device: torch.device,
) -> Bundle:
    """An uncalibrated bundle (thresholds +inf) ready for `calibrate_bundle`."""
    k = len(members)
    placeholder = Calibration("mean_std", [0.0] * k, [0.0] * k, [float("inf")] * k, 0)
    shape = (members[0][1].config.channels, *dataset["image_size"])
    spec = BundleSpec(
        name=name,
        version=version,
        input_shape=shape,
        classes=classes,
        classifier=classifier_config,
        members=[Member(sigma, d.config) for sigma, d in members],
        alpha=alpha,
        calibration=placeholder,
        dataset=dataset,
        training=training,
    )
    return Bundle(spec, classifier, [d for _, d in members], device)


def dataset_record(data: str | Path, splits: Splits, validation: ValidationSplit) -> dict[str, Any]:
    return {
        "source": Path(data).name,
        "train_images": len(validation.train),
        "validation": validation.record(),
        "test_images": len(splits.test),
        "image_size": list(splits.train.shape[1:]),
    }


def train_bundle(
    preset: Preset,
    data: str | Path,
    out: str | Path,
    checkpoints: str | Path,
    device: torch.device,
    classifier: nn.Module | None = None,
) -> tuple[Bundle, dict[str, Any]]:
    """Classifier, K denoisers, calibration on the validation split; the bundle saved to `out`.

    Given `classifier` (e.g. another bundle's, to compare denoisers on the same classifier),
    that one is protected instead of training a new one.
    """
    started = time.monotonic()
    ckpt_dir = Path(checkpoints)
    splits, validation = load_splits(data, preset)
    if classifier is None:
        classifier = train_classifier(
            preset.classifier,
            preset.classifier_training,
            validation.train,
            validation.validation,
            ckpt_dir / "classifier.pt",
            device,
        )
    members = []
    for sigma in preset.sigmas:
        config = DenoiserConfig(preset.input_shape[0], preset.edge, preset.architecture)
        denoiser = train_denoiser(
            config,
            preset.denoiser_training(sigma),
            classifier,
            validation.train,
            validation.validation,
            ckpt_dir / f"denoiser-sigma{sigma:g}.pt",
            device,
        )
        members.append((sigma, denoiser))
    training = {
        "preset": preset.name,
        "classifier": asdict(preset.classifier_training),
        "denoisers": [asdict(preset.denoiser_training(s)) for s in preset.sigmas],
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    bundle = assemble(
        preset.name,
        preset.version,
        preset.classifier,
        classifier,
        members,
        preset.score_alpha,
        splits.train.classes,
        dataset_record(data, splits, validation),
        training,
        device,
    )
    bundle = calibrate_bundle(bundle, validation, preset.rule, preset.k, preset.target_fpr)
    summary = {
        "validation_accuracy": accuracy(bundle.classifier, validation.validation, device),
        "test_accuracy": accuracy(bundle.classifier, splits.test, device),
        "seconds": round(time.monotonic() - started, 1),
    }
    bundle = Bundle(
        replace(bundle.spec, training={**bundle.spec.training, "summary": summary}),
        bundle.classifier,
        bundle.denoisers,
        bundle.device,
    )
    bundle.save(out)
    return bundle, summary


def seeded_indices(n: int, count: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n)[:count])
