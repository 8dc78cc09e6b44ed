"""`defed train classifier|denoiser|bundle|magnet`: train the networks, build a bundle, or a baseline."""

from __future__ import annotations

import json
from pathlib import Path

import click

from defed_core.bundle import Bundle
from defed_core.denoiser import DenoiserConfig
from defed_core.device import select_device
from defed_core.pipeline import load_splits, train_bundle
from defed_core.presets import get_preset
from defed_core.training import ClassifierTraining, DenoiserTraining, accuracy, train_classifier, train_denoiser
from gateway.commands.common import (
    bundle_option,
    bundle_path,
    checkpoint_classifier,
    device_option,
    guard,
    load_bundle,
    preset_option,
)


@click.group()
def train() -> None:
    """Train classifiers and denoisers, or a whole bundle from a preset.

    Every stage writes a checkpoint after each epoch; running the same command again
    continues where it stopped (a checkpoint of another configuration is refused).
    """


@train.command("bundle")
@preset_option
@click.option(
    "--data", required=True, type=click.Path(exists=True), help="Dataset file or folder (see docs/training.md)."
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle directory to write.")
@click.option("--checkpoints", type=click.Path(file_okay=False), help="Checkpoint folder [default: OUT.checkpoints].")
@click.option("--classifier-from", help="Protect this bundle's classifier (name or directory) instead of training one.")
@device_option
def train_bundle_cmd(
    preset: str, data: str, out: str, checkpoints: str | None, classifier_from: str | None, device: str
) -> None:
    """Classifier, K denoisers and calibration: the whole job, from a named preset."""
    with guard():
        recipe = get_preset(preset)
        classifier = load_bundle(classifier_from, "cpu").classifier if classifier_from else None
        _, summary = train_bundle(
            recipe, data, out, checkpoints or f"{out}.checkpoints", select_device(device), classifier
        )
    click.echo(f"bundle written to {out}: {json.dumps(summary)}")


@train.command("classifier")
@preset_option
@click.option("--data", required=True, type=click.Path(exists=True))
@click.option(
    "--checkpoint", required=True, type=click.Path(dir_okay=False), help="Checkpoint file (resumed if present)."
)
@click.option("--epochs", type=int, help="Override the preset's number of epochs.")
@device_option
def train_classifier_cmd(preset: str, data: str, checkpoint: str, epochs: int | None, device: str) -> None:
    """Train the protected classifier of a preset."""
    with guard():
        recipe = get_preset(preset)
        training = recipe.classifier_training
        if epochs is not None:
            training = ClassifierTraining(**{**training.__dict__, "epochs": epochs})
        splits, validation = load_splits(data, recipe)
        dev = select_device(device)
        model = train_classifier(
            recipe.classifier, training, validation.train, validation.validation, Path(checkpoint), dev
        )
        click.echo(f"test accuracy {accuracy(model, splits.test, dev):.4f}")


@train.command("denoiser")
@preset_option
@click.option("--data", required=True, type=click.Path(exists=True))
@click.option(
    "--classifier",
    "classifier_ckpt",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Classifier checkpoint (from `defed train classifier`).",
)
@click.option("--sigma", required=True, type=float, help="Training noise level σ on the 0–255 scale.")
@click.option("--edge", type=click.Choice(["laplacian", "sobel"]), default="laplacian", show_default=True)
@click.option("--architecture", type=click.Choice(["defed", "basenet"]), default="defed", show_default=True)
@click.option("--epochs", type=int, default=4, show_default=True)
@click.option("--images-per-epoch", type=int, help="A fresh random subset of this size each epoch.")
@click.option("--alpha", type=float, default=1.0, show_default=True)
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False))
@device_option
def train_denoiser_cmd(
    preset: str,
    data: str,
    classifier_ckpt: str,
    sigma: float,
    edge: str,
    architecture: str,
    epochs: int,
    images_per_epoch: int | None,
    alpha: float,
    checkpoint: str,
    device: str,
) -> None:
    """Train one denoiser at noise level σ against a frozen classifier."""
    with guard():
        recipe = get_preset(preset)
        _, validation = load_splits(data, recipe)
        dev = select_device(device)
        classifier = checkpoint_classifier(Path(classifier_ckpt))
        config = DenoiserConfig(recipe.input_shape[0], edge, architecture)  # type: ignore[arg-type]
        training = DenoiserTraining(sigma=sigma, epochs=epochs, alpha=alpha, images_per_epoch=images_per_epoch)
        train_denoiser(config, training, classifier, validation.train, validation.validation, Path(checkpoint), dev)
        click.echo(f"denoiser written to {checkpoint}")


@train.command("magnet")
@bundle_option
@click.option("--data", required=True, type=click.Path(exists=True), help="The dataset the bundle was trained on.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder to write [default: eval-models/<profile>-magnet, e.g. eval-models/cifar10-magnet].")
def train_magnet_cmd(bundle_ref: str, data: str, out: str | None) -> None:
    """The MagNet-style baseline of `defed evaluate`: its autoencoder, for the bundle's dataset.

    Trained on the bundle's training part (its validation split stays held out), with the
    layout and settings of the bundle's evaluation profile (MNIST or CIFAR-10). On the CPU.
    """
    from defed_core.evaluation.profiles import profile_for
    from gateway.commands.evaluate import recorded_split, train_magnet_baseline

    with guard():
        bundle = Bundle.load(bundle_path(bundle_ref), "cpu", fast=False)
        profile = profile_for(bundle.input_shape)
        path = out or profile.default_magnet
        magnet = train_magnet_baseline(recorded_split(bundle, data), data, path, profile)
    click.echo(f"MagNet-style autoencoder written to {path}: validation MSE {magnet.history[-1]['val_mse']:.5f}")
