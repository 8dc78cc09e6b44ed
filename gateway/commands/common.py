"""Options and error handling shared by the subcommands."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from torch import nn

from defed_core.bundle import Bundle, resolve_bundle_path
from defed_core.checkpoint import Checkpoint
from defed_core.classifiers import ClassifierConfig, build_classifier
from defed_core.presets import PRESETS
from gateway.errors import INPUT_ERRORS, UserError

preset_option = click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default="mnist",
    show_default=True,
    help="Training recipe (input shape, networks, σ values, calibration rule).",
)
device_option = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where to run: CUDA when present with auto.",
)
bundle_option = click.option(
    "--bundle",
    "bundle_ref",
    default="mnist",
    show_default=True,
    help="A shipped bundle's name or a bundle directory.",
)


@contextmanager
def guard() -> Iterator[None]:
    """Turn library input errors into the one-line UserError the CLI prints."""
    try:
        yield
    except INPUT_ERRORS as exc:
        raise UserError(str(exc)) from exc
    except ValueError as exc:
        raise UserError(str(exc)) from exc


bundle_path = resolve_bundle_path


def load_bundle(ref: str, device: str = "auto") -> Bundle:
    return Bundle.load(bundle_path(ref), device)


def checkpoint_classifier(path: Path) -> nn.Module:
    ckpt = Checkpoint.load(path, "classifier")
    model = build_classifier(ClassifierConfig.from_dict(ckpt.model_config))
    model.load_state_dict(ckpt.state_dict)
    return model.eval()
