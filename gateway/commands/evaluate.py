"""`defed evaluate`: attacks × detectors, with baselines and an adaptive attack, into a report folder.

The bundle's input shape picks the evaluation profile (MNIST or CIFAR-10: budgets, attack
settings, baselines' settings and default folders; `defed_core/evaluation/profiles.py`).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np
import torch
from click.core import ParameterSource

from defed_core.bundle import Bundle, BundleError
from defed_core.data import ImageSet, ValidationSplit, load_dataset, split_validation
from defed_core.device import select_device
from gateway.commands.common import bundle_option, bundle_path, device_option, guard
from gateway.errors import UserError

if TYPE_CHECKING:
    from defed_core.evaluation.magnet import MagNet
    from defed_core.evaluation.profiles import Profile

ATTACK_NAMES = ("fgsm", "pgd-linf", "pgd-l2", "square", "cw-l2", "deepfool", "jsma")


def given_command(ctx: click.Context) -> str:
    """The command as typed: the options given on the command line, in a stable order."""
    words = ["defed", "evaluate"]
    for param in ctx.command.params:
        if param.name is None or ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        flag = param.opts[0]
        value = ctx.params[param.name]
        if isinstance(param, click.Option) and param.is_flag:
            words += [flag] if value else []
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def recorded_validation(bundle: Bundle, train: ImageSet) -> ValidationSplit:
    """The bundle's validation split, re-made from the seed and size in bundle.json and checked."""
    recorded = bundle.spec.dataset.get("validation") or bundle.spec.calibration.origin
    if not recorded or "seed" not in recorded:
        raise BundleError("bundle.json records no validation split (seed, size): thresholds need held-out images")
    split = split_validation(train, int(recorded["size"]), int(recorded["seed"]))
    if recorded.get("indices_sha256") and split.record()["indices_sha256"] != recorded["indices_sha256"]:
        raise BundleError("--data gives another validation split than the bundle recorded (another dataset?)")
    return split


def stored_as_jpeg(data: str) -> bool:
    """Whether the dataset file keeps its images as JPEG files (the packed CIFAR-10 format)."""
    path = Path(data)
    if path.suffix != ".npz" or not path.is_file():
        return False
    with np.load(path) as z:
        return "train_jpeg" in z.files


def load_basenet(path: str, bundle: Bundle, bundle_ref: str, data: str, profile: Profile, device: str) -> Bundle:
    if not (Path(path) / "bundle.json").is_file():
        raise UserError(f"BaseNet ensemble missing at {path}: train it with `defed train bundle --preset "
                        f"{profile.basenet_preset} --data {data} --out {path} --classifier-from {bundle_ref}`, "
                        "or give --basenet")
    basenet = Bundle.load(path, device, fast=False)
    same = all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(basenet.classifier.state_dict().values(),
                                                             bundle.classifier.state_dict().values(), strict=True))
    if not same:
        raise UserError(f"{path} protects another classifier than the evaluated bundle; retrain it with "
                        "--classifier-from so that only the denoisers differ")
    return basenet


def train_magnet_baseline(split: ValidationSplit, data: str, path: str, profile: Profile) -> MagNet:
    """The profile's MagNet autoencoder, trained on the bundle's training part (never its validation split)."""
    from defed_core.evaluation.magnet import train_magnet

    origin = {"data": Path(data).name, "validation": split.record(), "profile": profile.name}
    return train_magnet(split.train, split.validation, profile.magnet.training, path, origin,
                        pooled=profile.magnet.pooled)


def load_or_train_magnet(path: str, train_magnet: bool, split: ValidationSplit, data: str, bundle_ref: str,
                         profile: Profile) -> Any:
    from defed_core.evaluation.magnet import MagNet

    if (Path(path) / "magnet.json").is_file():
        model = MagNet.load(path).model
        if model.channels != split.train.shape[0] or model.pooled != profile.magnet.pooled:
            raise UserError(f"{path} holds a MagNet autoencoder for {model.channels}-channel images "
                            f"({'pooled' if model.pooled else 'flat'} layout), not this bundle's {profile.name} one")
        return model
    if not train_magnet:
        raise UserError(f"MagNet-style autoencoder missing at {path}: train it with `defed train magnet --bundle "
                        f"{bundle_ref} --data {data} --out {path}`, or add --train-magnet here, or give --magnet")
    return train_magnet_baseline(split, data, path, profile).model


def recorded_split(bundle: Bundle, data: str) -> ValidationSplit:
    c, h, w = bundle.input_shape
    return recorded_validation(bundle, load_dataset(data, channels=c, size=(h, w)).train)


@click.command()
@bundle_option
@click.option("--data", required=True, type=click.Path(exists=True), help="The dataset the bundle was trained on.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report folder to write.")
@click.option("--basenet", type=click.Path(),
              help="BaseNet ensemble bundle (same classifier) for the edge-feature ablation "
                   "[default: eval-models/<profile>-basenet, e.g. eval-models/cifar10-basenet].")
@click.option("--magnet", type=click.Path(),
              help="Folder of the MagNet-style autoencoder [default: eval-models/<profile>-magnet].")
@click.option("--train-magnet", is_flag=True, help="Train the MagNet-style autoencoder into --magnet if it is missing.")
@click.option("--attacks", default=",".join(ATTACK_NAMES), show_default=True,
              help="Comma-separated attacks to run.")
@click.option("--per-cell", type=click.IntRange(1), default=150, show_default=True,
              help="Successful adversarial examples per attack cell.")
@click.option("--max-attempts", type=click.IntRange(1), default=1000, show_default=True,
              help="Test images attacked at most per cell.")
@click.option("--benign", type=click.IntRange(2), default=1500, show_default=True,
              help="Benign test images (false-positive rate, benign accuracy, ROC negatives).")
@click.option("--fpr-budget", type=click.FloatRange(0, 1, max_open=True), default=0.05, show_default=True,
              help="False-positive budget every detector's threshold is set to, on the validation split.")
@click.option("--adaptive-count", type=click.IntRange(0), default=100, show_default=True,
              help="Images attacked by the adaptive attack per ε (0 skips it).")
@click.option("--adaptive-steps", type=click.IntRange(1), default=60, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--docs", type=click.Path(exists=True, dir_okay=False),
              help="Also copy the generated tables into this page (between its generated-tables markers).")
@device_option
@click.pass_context
def evaluate(ctx: click.Context, bundle_ref: str, data: str, out: str, basenet: str | None, magnet: str | None,
             train_magnet: bool, attacks: str, per_cell: int, max_attempts: int, benign: int, fpr_budget: float,
             adaptive_count: int, adaptive_steps: int, seed: int, docs: str | None, device: str) -> None:
    """Attack the bundle's classifier and measure every detector on the same adversarial examples.

    Detectors: the Defed ensemble (at the budget and at its shipped thresholds) and each member,
    the BaseNet ensemble, Feature Squeezing, a MagNet-style autoencoder and no defence. Thresholds
    come from the bundle's validation split; rates are measured on test images. The bundle's
    input shape picks the ε grid and the baselines' settings (MNIST or CIFAR-10). Writes
    results.md, results.json and PNG figures to --out.
    """
    try:
        from defed_core.evaluation.detectors import DenoiserEnsemble, FeatureSqueezing, MagNetDetector, NoDefence
        from defed_core.evaluation.experiment import Detector, EvaluationPlan, run_evaluation
        from defed_core.evaluation.profiles import profile_for
        from defed_core.evaluation.report import bundle_meta, sync_docs, write_report
    except ImportError as exc:
        raise UserError(f"evaluation needs the eval extra (pip install 'defed-gateway[eval]'): {exc}") from exc
    names = tuple(a.strip() for a in attacks.split(",") if a.strip())
    unknown = sorted(set(names) - set(ATTACK_NAMES))
    if unknown or not names:
        raise UserError(f"--attacks: unknown {', '.join(unknown) or 'empty list'}; "
                        f"choose from {', '.join(ATTACK_NAMES)}")
    with guard():
        torch.manual_seed(seed)
        bundle = Bundle.load(bundle_path(bundle_ref), device, fast=False)  # attacks need the plain modules only
        profile = profile_for(bundle.input_shape)
        basenet, magnet = basenet or profile.default_basenet, magnet or profile.default_magnet
        dev = select_device(device)
        base = load_basenet(basenet, bundle, bundle_ref, data, profile, device)
        c, h, w = bundle.input_shape
        splits = load_dataset(data, channels=c, size=(h, w))
        split = recorded_validation(bundle, splits.train)
        autoencoder = load_or_train_magnet(magnet, train_magnet, split, data, bundle_ref, profile).to(dev)
        f = bundle.classifier
        magnet_scores = profile.magnet.scores
        detectors = [
            Detector("defed", "Defed ensemble", DenoiserEnsemble(f, bundle.denoisers, bundle.alpha), ensemble=True),
            Detector("basenet", "BaseNet ensemble", DenoiserEnsemble(f, base.denoisers, base.alpha), ensemble=True),
            Detector("feature-squeezing", "Feature Squeezing", FeatureSqueezing(f, profile.squeezers)),
            # MagNet's CIFAR-10 setting has three detectors: one threshold on their standardised scores.
            Detector("magnet", "MagNet-style", MagNetDetector(f, autoencoder, magnet_scores),
                     ensemble=len(magnet_scores.names) > 1),
            Detector("none", "No defence", NoDefence(f)),
        ]
        plan = EvaluationPlan(names, per_cell, benign, fpr_budget, adaptive_count, adaptive_steps, max_attempts, seed,
                              profile.name)
        evaluation = run_evaluation(bundle, split.validation, splits.test, detectors, plan)
        evaluation.summary["validation"] |= split.record()
        meta: dict[str, Any] = {"command": given_command(ctx),
                                "bundle": {**bundle_meta(bundle), "path": str(bundle_path(bundle_ref))},
                                "baselines": {"basenet": basenet, "magnet": magnet}, "data": data,
                                "profile": profile.record(), "notes": list(profile.report_notes)}
        if stored_as_jpeg(data) and profile.jpeg_note:
            meta |= {"data_note": profile.jpeg_note, "figure_caption": profile.jpeg_caption}
        root = write_report(evaluation, out, meta)
        if docs:
            sync_docs(root / "results.md", docs)
    minutes = evaluation.summary["seconds"]["total"] / 60
    click.echo(f"report written to {root} ({len(evaluation.summary['cells'])} attack cells, {minutes:.1f} min)")
