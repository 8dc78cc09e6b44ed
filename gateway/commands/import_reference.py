"""`defed import-reference`: a bundle from checkpoints saved by the paper's reference code."""

from __future__ import annotations

from pathlib import Path

import click

from defed_core.data import DatasetError, load_dataset, split_validation
from defed_core.device import select_device
from defed_core.pipeline import assemble, calibrate_bundle, dataset_record
from defed_core.presets import get_preset
from defed_core.reference import REFERENCE_DATASETS, import_classifier, import_denoiser
from gateway.commands.common import device_option, guard


@click.command("import-reference")
@click.option(
    "--reference-dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder holding classifier/<dataset>/ and Defed/<dataset>/ as the reference code saves them.",
)
@click.option("--dataset", type=click.Choice(sorted(REFERENCE_DATASETS)), default="mnist", show_default=True)
@click.option("--edge", type=click.Choice(["laplacian", "sobel"]), default="laplacian", show_default=True)
@click.option("--sigmas", required=True, help="Comma-separated noise levels of the members, e.g. 20,40.")
@click.option("--data", required=True, type=click.Path(exists=True), help="Dataset whose validation split calibrates.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle directory to write.")
@click.option("--rule", type=click.Choice(["fpr", "mean_std"]), default="fpr", show_default=True)
@click.option("--k", type=float, default=3.0, show_default=True)
@click.option("--target-fpr", type=float, default=0.01, show_default=True)
@click.option("--validation-size", type=int, default=5000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@device_option
def import_reference(
    reference_dir: str,
    dataset: str,
    edge: str,
    sigmas: str,
    data: str,
    out: str,
    rule: str,
    k: float,
    target_fpr: float,
    validation_size: int,
    seed: int,
    device: str,
) -> None:
    """Turn reference checkpoints into a calibrated bundle.

    Reads DIR/classifier/mnist/mnist-classifier.pth and
    DIR/Defed/mnist/mnist-{edge}-alpha=1-noise={σ}-bestloss-GPU.pth for every σ, then
    calibrates on a held-out validation split of --data. Beware: the reference classifier may
    have been trained on all of the training set, validation split included.
    """
    with guard():
        try:
            levels = [float(s) for s in sigmas.split(",") if s.strip()]
        except ValueError as exc:
            raise ValueError(f"--sigmas must be numbers separated by commas, got {sigmas!r}") from exc
        if not levels:
            raise ValueError("--sigmas names no noise level")
        root = Path(reference_dir)
        dev = select_device(device)
        classifier = import_classifier(root, dataset)
        members = [(s, import_denoiser(root, dataset, edge, s)) for s in levels]  # type: ignore[arg-type]
        preset = get_preset(dataset)
        splits = load_dataset(data)
        if splits.train.shape != preset.input_shape:
            raise DatasetError(f"{data}: images are {splits.train.shape}, {dataset} needs {preset.input_shape}")
        validation = split_validation(splits.train, validation_size, seed)
        bundle = assemble(
            f"{dataset}-reference",
            "1.0.0",
            preset.classifier,
            classifier,
            members,
            1.0,
            splits.train.classes,
            dataset_record(data, splits, validation),
            {"imported_from": str(root), "edge": edge},
            dev,
        )
        calibrated = calibrate_bundle(bundle, validation, rule, k, target_fpr)  # type: ignore[arg-type]
        calibrated.save(out)
    click.echo(f"imported {len(levels)} members into {out}")
