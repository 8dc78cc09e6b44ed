"""The harness on 3-channel 32×32 bundles: the CIFAR-10 profile, its baselines, and a whole tiny run."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.spatial.distance
import torch
from torch import Tensor, nn
from toy_networks import Brightness, Identity

from defed_core.bundle import Bundle
from defed_core.classifiers import ClassifierConfig, build_classifier
from defed_core.evaluation.adaptive import AdaptiveSpec, defence_aware_pgd
from defed_core.evaluation.attacks import art_classifier, build_attack, mnist_grid
from defed_core.evaluation.detectors import (
    DenoiserEnsemble,
    FeatureSqueezing,
    Inspection,
    MagNetDetector,
    MagNetScores,
    bit_depth,
    jensen_shannon,
    non_local_means,
    squeezer,
)
from defed_core.evaluation.experiment import Detector, build_screens
from defed_core.evaluation.magnet import Autoencoder, MagNet, MagNetTraining
from defed_core.evaluation.profiles import CIFAR10, MNIST, profile_for
from defed_core.evaluation.report import TABLES_BEGIN, TABLES_END, sync_docs, tables_block
from defed_core.pipeline import train_bundle
from defed_core.presets import PRESETS
from defed_core.testing import untrained_bundle
from gateway.cli import main
from gateway.commands.evaluate import load_basenet

REPO = Path(__file__).resolve().parents[2]
JPEG = "JPEG-compressed (quality 75, 4:2:0)"
ALL = ("fgsm", "pgd-linf", "pgd-l2", "square", "cw-l2", "deepfool", "jsma")


class TestProfile:
    def test_input_shape_picks_the_profile(self) -> None:
        assert profile_for((3, 32, 32)) is CIFAR10 and profile_for((1, 28, 28)) is MNIST
        with pytest.raises(ValueError, match="no evaluation profile for input shape 3×64×64"):
            profile_for((3, 64, 64))

    def test_cifar_grid_has_the_issue_budgets_labelled_in_grey_levels(self) -> None:
        labels = [s.label for s in CIFAR10.grid(ALL)]
        assert labels == [
            "fgsm ε=2/255", "fgsm ε=4/255", "fgsm ε=8/255",
            "pgd-linf ε=2/255", "pgd-linf ε=4/255", "pgd-linf ε=8/255",
            "pgd-l2 ε=0.25", "pgd-l2 ε=0.5", "pgd-l2 ε=1",
            "square ε=2/255", "square ε=4/255", "square ε=8/255",
            "cw-l2", "deepfool", "jsma",
        ]

    def test_pgd_takes_forty_steps_of_a_tenth_of_eps(self) -> None:
        pgd = [s for s in CIFAR10.grid(("pgd-linf", "pgd-l2"))]
        assert all(s.steps == 40 and s.eps is not None and s.step_size == pytest.approx(s.eps / 10) for s in pgd)

    def test_mnist_grid_is_unchanged(self) -> None:
        """The committed MNIST report's cells: plain ε labels, L∞ step 0.01, L2 step ε/20."""
        grid = mnist_grid()
        assert [s.label for s in grid][:3] == ["fgsm ε=0.1", "fgsm ε=0.2", "fgsm ε=0.3"]
        assert {s.step_size for s in grid if s.name == "pgd-linf"} == {0.01}
        assert [s.step_size for s in grid if s.name == "pgd-l2"] == [1 / 20, 2 / 20, 3 / 20]

    def test_art_attacks_take_the_cifar_settings(self) -> None:
        estimator = art_classifier(build_classifier(ClassifierConfig("vgg", 3, 10)), (3, 32, 32), 10)
        specs = {s.label: s for s in CIFAR10.grid(("pgd-linf", "square", "cw-l2"))}
        pgd = build_attack(specs["pgd-linf ε=8/255"], estimator, settings=CIFAR10.attacks)
        square = build_attack(specs["square ε=2/255"], estimator, settings=CIFAR10.attacks)
        cw = build_attack(specs["cw-l2"], estimator, settings=CIFAR10.attacks)
        assert pgd.eps_step == pytest.approx(0.8 / 255) and pgd.max_iter == 40
        assert square.max_iter == 500 and square.p_init == 0.3 and square.eps == pytest.approx(2 / 255)
        assert cw.learning_rate == 0.01


class TestColourBaselines:
    def test_squeezers_by_name(self) -> None:
        x = torch.rand(2, 3, 8, 8)
        assert torch.equal(squeezer("bit-depth-5")(x), bit_depth(x, 5))
        assert len(torch.unique(squeezer("bit-depth-5")(x))) <= 32
        with pytest.raises(ValueError, match="unknown squeezer"):
            squeezer("jpeg-75")

    def test_non_local_means_keeps_flat_colour_and_smooths_noise(self) -> None:
        flat = torch.full((1, 3, 32, 32), 0.0)
        flat[:, 0], flat[:, 1], flat[:, 2] = 200 / 255, 40 / 255, 90 / 255  # an 8-bit colour
        assert torch.allclose(non_local_means(flat), flat, atol=3 / 255)  # OpenCV rounds through CIELAB
        gen = torch.Generator().manual_seed(0)
        noisy = (0.5 + 0.02 * torch.randn(1, 3, 32, 32, generator=gen)).clamp(0, 1)
        smoothed = non_local_means(noisy, 13, 3, 10.0)
        assert smoothed.shape == noisy.shape and smoothed.std() < noisy.std()

    def test_feature_squeezing_cifar_setting_on_colour_images(self) -> None:
        fs = FeatureSqueezing(Brightness(), CIFAR10.squeezers)
        with torch.no_grad():
            ins = fs(torch.rand(4, 3, 32, 32))
        assert fs.names == ("bit-depth-5", "median-2x2", "non-local-means-13-3-2")
        assert ins.parts.shape == (4, 1) and (ins.parts >= 0).all()

    def test_jensen_shannon_matches_scipy(self) -> None:
        a, b = torch.randn(3, 10), torch.randn(3, 10)
        p, q = a.softmax(1).double().numpy(), b.softmax(1).double().numpy()
        expected = [scipy.spatial.distance.jensenshannon(p[i], q[i]) ** 2 for i in range(3)]  # natural log
        assert jensen_shannon(a, b).tolist() == pytest.approx(expected, rel=1e-4)

    def test_magnet_cifar_detectors_are_three_parts(self) -> None:
        """L1 reconstruction error and JSD at T = 10 and 40 between f(x) and f(AE(x)); label f(AE(x))."""
        x = torch.rand(2, 3, 8, 8) * 0.2  # dark (class 1); the "autoencoder" returns bright images (class 0)

        class Bright(Identity):
            def forward(self, x: Tensor) -> Tensor:
                return torch.ones_like(x) + 0 * self.dummy

        scores = MagNetScores("l1", (10.0, 40.0))
        f = Brightness()
        with torch.no_grad():
            ins = MagNetDetector(f, Bright(), scores)(x)
            logits, healed = f(x), f(torch.ones_like(x))
        assert scores.names == ["l1", "jsd-T10", "jsd-T40"] and ins.parts.shape == (2, 3)
        assert torch.allclose(ins.parts[:, 0], (1 - x).abs().flatten(1).mean(1))
        assert torch.allclose(ins.parts[:, 2], jensen_shannon(logits / 40, healed / 40))
        assert ins.passed_label.tolist() == [0, 0]
        with torch.no_grad():
            assert torch.allclose(MagNetDetector(f, Identity(), scores)(x).parts, torch.zeros(2, 3), atol=1e-7)

    def test_flat_autoencoder_round_trip(self, tmp_path: Path) -> None:
        """MagNet's CIFAR-10 layout: three 3×3 convolutions at full resolution; the flag survives saving."""
        model = Autoencoder(channels=3, pooled=False)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 3), (3, 3), (3, 3)]
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
        MagNet(model, MagNetTraining()).save(tmp_path)
        assert not MagNet.load(tmp_path).model.pooled

    def test_an_older_magnet_file_loads_as_pooled(self, tmp_path: Path) -> None:
        MagNet(Autoencoder(), MagNetTraining()).save(tmp_path)
        meta = json.loads((tmp_path / "magnet.json").read_text())
        del meta["model"]["pooled"]  # as the committed MNIST autoencoder's file was written
        (tmp_path / "magnet.json").write_text(json.dumps(meta))
        assert MagNet.load(tmp_path).model.pooled


class TestAdaptiveOnColour:
    def test_relative_penalty_evades_within_a_grey_level_budget(self) -> None:
        f, members = Brightness(), [Identity(), Identity()]
        x, y = torch.full((3, 3, 8, 8), 0.52), torch.zeros(3, dtype=torch.long)
        spec = CIFAR10.adaptive_specs(steps=30)[2]  # L∞ 8/255
        assert spec.label == "adaptive-pgd-linf ε=8/255" and spec.penalty == "relative"
        result = defence_aware_pgd(f, members, 1.0, torch.tensor([0.6, 0.6]), x, y, spec, progress=False)
        assert result.evaded.all() and (result.adversarial - x).abs().max() <= 8 / 255 + 1e-6
        assert (f(result.adversarial).argmax(1) != y).all()

    def test_every_budget_gets_an_adaptive_spec(self) -> None:
        labels = [s.label for s in CIFAR10.adaptive_specs(steps=5)]
        assert labels[0] == "adaptive-pgd-linf ε=2/255" and labels[-1] == "adaptive-pgd-l2 ε=1" and len(labels) == 6
        assert AdaptiveSpec("l2", 1.0).penalty == "absolute"  # the MNIST report's form stays the default


def evaluate(paths: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["evaluate", "--bundle", str(paths["bundle"]), "--data", str(paths["data"]), "--out", str(out),
                 "--basenet", str(paths["basenet"]), "--magnet", str(paths["magnet"]),
                 "--attacks", "fgsm,pgd-l2,deepfool", "--per-cell", "2", "--max-attempts", "4",
                 "--benign", "12", "--adaptive-count", "2", "--adaptive-steps", "2", "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, tiny_cifar: dict[str, Path]) -> Path:
    out = tmp_path_factory.mktemp("cifar-report") / "r"
    assert evaluate(tiny_cifar, out) == 0
    return out


class TestCifarReport:
    def test_cells_and_adaptive_rows_use_the_cifar_budgets(self, report: Path) -> None:
        doc = json.loads((report / "results.json").read_text())
        assert [c["label"] for c in doc["cells"]] == [
            "fgsm ε=2/255", "fgsm ε=4/255", "fgsm ε=8/255", "pgd-l2 ε=0.25", "pgd-l2 ε=0.5", "pgd-l2 ε=1",
            "deepfool"]
        assert [r["eps_text"] for r in doc["adaptive"]] == ["2/255", "4/255", "8/255", "0.25", "0.5", "1"]
        assert doc["plan"]["profile"] == "cifar10"
        assert doc["meta"]["profile"]["squeezers"] == ["bit-depth-5", "median-2x2", "non-local-means-13-3-2"]

    def test_baselines_run_in_their_cifar_setting(self, report: Path) -> None:
        doc = json.loads((report / "results.json").read_text())
        screens = {s["key"]: s for s in doc["screens"]}
        assert set(screens) == {"defed", "defed-shipped", "defed-member-0", "defed-member-1", "basenet",
                                "feature-squeezing", "magnet", "none"}
        for key in ("defed", "basenet", "feature-squeezing", "magnet"):
            assert screens[key]["validation_fpr"] <= 0.05
        assert doc["meta"]["baselines"]["magnet"].endswith("magnet")

    def test_writes_tables_and_figures(self, report: Path) -> None:
        names = {p.name for p in report.iterdir()}
        assert {"results.md", "results.json", "detection-vs-eps.png", "adaptive.png", "hist-member-0.png",
                "hist-member-1.png"} <= names
        assert any(n.startswith("roc-") and n.endswith(".png") for n in names)
        assert all((report / n).stat().st_size > 1000 for n in names if n.endswith(".png"))

    def test_says_the_images_are_jpeg_where_figures_and_tables_appear(self, report: Path) -> None:
        text = (report / "results.md").read_text()
        block = text[text.index(TABLES_BEGIN) : text.index(TABLES_END)]
        figures = text[text.index("## Figures") :]
        assert JPEG in block and JPEG in figures
        assert "| fgsm ε=8/255 |" in block and "adaptive-pgd-linf ε=2/255" in block and "L∞ ε=8/255" in block

    def test_docs_page_keeps_its_jpeg_note_after_a_sync(self, report: Path, tmp_path: Path) -> None:
        page = tmp_path / "evaluation-cifar10.md"
        shutil.copy(REPO / "docs" / "evaluation-cifar10.md", page)
        sync_docs(report / "results.md", page)
        text = page.read_text()
        outside = text[: text.index(TABLES_BEGIN)]
        assert JPEG in outside and "fgsm ε=2/255" in text


class TestCifarCommands:
    def test_default_baselines_are_the_cifar10_ones(self, tiny_cifar: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
        monkeypatch.chdir(tmp_path)
        code = main(["evaluate", "--bundle", str(tiny_cifar["bundle"]), "--data", str(tiny_cifar["data"]),
                     "--out", "r"])
        err = capsys.readouterr().err
        assert code == 2 and "eval-models/cifar10-basenet" in err and "--preset cifar10-basenet" in err

    def test_train_magnet_writes_the_flat_colour_autoencoder(self, tiny_cifar: dict[str, Path],
                                                             tmp_path: Path) -> None:
        out = tmp_path / "magnet"
        assert main(["train", "magnet", "--bundle", str(tiny_cifar["bundle"]), "--data", str(tiny_cifar["data"]),
                     "--out", str(out)]) == 0
        doc = json.loads((out / "magnet.json").read_text())
        assert doc["model"] == {"channels": 3, "width": 3, "pooled": False}
        assert doc["training"]["noise"] == 0.025 and doc["origin"]["validation"]["size"] == 60
        assert np.isfinite(doc["history"][-1]["val_mse"])


class TestSingleMemberBundle:
    """The shipped cifar10 bundle has one member (σ = 32)."""

    def test_no_member_row_repeats_the_ensemble(self) -> None:
        bundle = untrained_bundle(input_shape=(3, 32, 32), sigmas=(32.0,))
        validation = {"defed": Inspection(torch.rand(50, 1), torch.rand(1, 50, 10), torch.zeros(50, dtype=torch.long))}
        detector = Detector("defed", "Defed ensemble", DenoiserEnsemble(bundle.classifier, bundle.denoisers, 1.0),
                            ensemble=True)
        assert [s.key for s in build_screens(bundle, [detector], validation, 0.05)] == ["defed", "defed-shipped"]

    def test_adaptive_heading_names_its_one_denoiser(self) -> None:
        row = {"label": "adaptive-pgd-linf ε=8/255", "norm": "linf", "eps": 8 / 255, "eps_text": "8/255",
               "attempted": 4, **{f"{m}_{t}": 0.5 for m in ("success", "detection", "label_wrong")
                                  for t in ("budget", "shipped")}}
        summary = {"plan": {"budget": 0.05}, "validation": {"images": 10}, "benign_images": 5, "screens": [],
                   "cells": [], "adaptive": [row], "findings": [], "meta": {"bundle": {"members": [{"sigma": 32}]}}}
        assert "through the classifier and its denoiser" in tables_block(summary)


class TestCifarBaselineTraining:
    def test_basenet_preset_trains_on_colour_images_around_the_same_classifier(
        self, tiny_cifar: dict[str, Path], tmp_path: Path
    ) -> None:
        """`defed train bundle --preset cifar10-basenet --classifier-from …`, shortened to seconds."""
        bundle = Bundle.load(tiny_cifar["bundle"], "cpu", fast=False)
        preset = replace(PRESETS["cifar10-basenet"], validation_size=60, denoiser_epochs=1,
                         denoiser_images_per_epoch=16)
        basenet, _ = train_bundle(preset, tiny_cifar["data"], tmp_path / "b", tmp_path / "ckpt", torch.device("cpu"),
                                  bundle.classifier)
        assert basenet.input_shape == (3, 32, 32)
        assert {m.config.architecture for m in basenet.spec.members} == {"basenet"}
        assert basenet.spec.dataset["validation"] == Bundle.load(tiny_cifar["bundle"]).spec.dataset["validation"]
        assert load_basenet(str(tmp_path / "b"), bundle, "tiny", str(tiny_cifar["data"]), CIFAR10, "cpu")


class TestCommittedCifarDocs:
    def test_docs_tables_match_the_committed_report(self) -> None:
        """docs/evaluation-cifar10.md shows exactly the block of reports/cifar10/results.md, once it exists."""
        results, page = REPO / "reports" / "cifar10" / "results.md", REPO / "docs" / "evaluation-cifar10.md"
        assert page.is_file() and JPEG in page.read_text()
        if not results.is_file():
            pytest.skip("no committed CIFAR-10 report yet")
        block = results.read_text()
        block = block[block.index(TABLES_BEGIN) : block.index(TABLES_END)]
        assert block in page.read_text()
