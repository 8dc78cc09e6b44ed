"""`defed calibrate`: set a bundle's thresholds from its held-out validation images."""

from __future__ import annotations

from pathlib import Path

import click

from defed_core.bundle import BundleError
from defed_core.data import load_dataset, split_validation
from defed_core.pipeline import calibrate_bundle
from gateway.commands.common import bundle_option, device_option, guard, load_bundle


@click.command()
@bundle_option
@click.option("--data", required=True, type=click.Path(exists=True), help="The dataset the bundle was trained on.")
@click.option(
    "--rule",
    type=click.Choice(["fpr", "mean_std"]),
    default="fpr",
    show_default=True,
    help="fpr: thresholds at a target false-positive rate; mean_std: μ + k·σ per member.",
)
@click.option("--k", type=float, default=3.0, show_default=True, help="k of the mean_std rule.")
@click.option(
    "--target-fpr",
    type=float,
    default=0.01,
    show_default=True,
    help="Share of held-out benign images the ensemble may flag (fpr rule).",
)
@click.option("--out", type=click.Path(file_okay=False), help="Where to write [default: the bundle itself].")
@device_option
def calibrate(bundle_ref: str, data: str, rule: str, k: float, target_fpr: float, out: str | None, device: str) -> None:
    """Recompute every member's threshold on the bundle's validation split.

    The split (seed and size) is the one recorded in bundle.json when the bundle was trained,
    so calibration never sees an image the networks were trained on.
    """
    with guard():
        bundle = load_bundle(bundle_ref, device)
        target = Path(out) if out else Path(bundle_ref)
        if not out and not Path(bundle_ref).is_dir():
            raise BundleError(f"{bundle_ref!r} is a shipped bundle: give --out DIR for the recalibrated copy")
        recorded = bundle.spec.dataset.get("validation") or bundle.spec.calibration.origin
        if not recorded or "seed" not in recorded:
            raise BundleError("bundle.json records no validation split (seed, size); cannot calibrate on held-out data")
        c, h, w = bundle.input_shape
        splits = load_dataset(data, channels=c, size=(h, w))
        validation = split_validation(splits.train, int(recorded["size"]), int(recorded["seed"]))
        if validation.record()["indices_sha256"] != recorded.get("indices_sha256"):
            raise BundleError(
                f"{data}: its validation split differs from the one recorded in the bundle (another dataset?)"
            )
        calibrated = calibrate_bundle(bundle, validation, rule, k, target_fpr)  # type: ignore[arg-type]
        calibrated.save(target)
    thresholds = ", ".join(f"{t:.4g}" for t in calibrated.spec.calibration.thresholds)
    click.echo(
        f"calibrated {len(thresholds.split(','))} members on {len(validation.validation)} held-out images "
        f"({rule}); thresholds {thresholds}; written to {target}"
    )
