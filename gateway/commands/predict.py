"""`defed predict`: run a bundle on image files, outside the gateway."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from defed_core.data import read_image
from gateway.commands.common import bundle_option, device_option, guard, load_bundle


@click.command()
@bundle_option
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image.")
@device_option
def predict(bundle_ref: str, images: tuple[str, ...], as_json: bool, device: str) -> None:
    """Label image files and say whether each looks adversarial.

    Each image is converted to the bundle's input shape as the gateway does (docs/gateway.md).
    """
    with guard():
        bundle = load_bundle(bundle_ref, device)
        c, h, w = bundle.input_shape
        batch = np.stack([read_image(Path(p), c, (h, w)) for p in images])  # (N, H, W, C)
        decision = bundle.predict(batch)
    for i, path in enumerate(images):
        row = {
            "image": path,
            "label": int(decision.label[i]),
            "class": bundle.classes[int(decision.label[i])],
            "adversarial": bool(decision.adversarial[i]),
            "original_label": int(decision.original_label[i]),
            "confidence": round(float(decision.confidence[i]), 4),
            "scores": [round(float(s), 5) for s in decision.scores[i]],
        }
        if as_json:
            click.echo(json.dumps(row))
        else:
            verdict = "ADVERSARIAL" if row["adversarial"] else "benign"
            click.echo(f"{path}: {row['class']} ({row['confidence']:.3f}) {verdict}")
