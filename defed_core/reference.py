"""Import checkpoints saved by the paper's reference implementation.

The reference code saves plain state dicts whose key names are the ones our modules use
(`skip1.layers.0.weight`, `en_efe_1.blurConv.0.weight`, `conv1.weight`, …), so importing is a
strict key-for-key load; only wrappers around the dict (a `module.` prefix from DataParallel,
or a {"state_dict": …} envelope) are undone first.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from defed_core.bundle import BundleError
from defed_core.classifiers import ClassifierConfig, build_classifier
from defed_core.denoiser import Denoiser, DenoiserConfig
from defed_core.filters import EdgeOperator

REFERENCE_DATASETS = {"mnist": (ClassifierConfig("lenet5", 1, 10), 1)}


def classifier_path(root: Path, dataset: str) -> Path:
    return root / "classifier" / dataset / f"{dataset}-classifier.pth"


def denoiser_path(root: Path, dataset: str, edge: EdgeOperator, sigma: float, alpha: float = 1.0) -> Path:
    return root / "Defed" / dataset / f"{dataset}-{edge}-alpha={alpha:g}-noise={sigma:g}-bestloss-GPU.pth"


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A reference checkpoint as a flat state dict (no pickled code is run)."""
    if not path.is_file():
        raise BundleError(f"{path}: reference checkpoint not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses anything but tensors and containers
        raise BundleError(f"{path}: not a plain state dict ({exc})") from exc
    for envelope in ("state_dict", "model_state_dict", "model"):
        if isinstance(raw, dict) and isinstance(raw.get(envelope), dict):
            raw = raw[envelope]
    if not isinstance(raw, dict) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise BundleError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in raw.items()}


def load_strict(module: nn.Module, state: dict[str, Tensor], source: Path) -> None:
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise BundleError(
            f"{source}: keys do not match the network (missing {missing[:4]}, unexpected {unexpected[:4]})"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{source}: {str(exc).splitlines()[0]}") from exc


def import_classifier(root: Path, dataset: str) -> nn.Module:
    if dataset not in REFERENCE_DATASETS:
        raise BundleError(f"reference dataset {dataset!r} not supported: expected one of {sorted(REFERENCE_DATASETS)}")
    config, _ = REFERENCE_DATASETS[dataset]
    model = build_classifier(config)
    path = classifier_path(root, dataset)
    load_strict(model, read_state_dict(path), path)
    return model.eval()


def import_denoiser(root: Path, dataset: str, edge: EdgeOperator, sigma: float) -> Denoiser:
    _, channels = REFERENCE_DATASETS[dataset]
    model = Denoiser(DenoiserConfig(channels, edge, "defed"))
    path = denoiser_path(root, dataset, edge, sigma)
    load_strict(model, read_state_dict(path), path)
    return model.eval()
