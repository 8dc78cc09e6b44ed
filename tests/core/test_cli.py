"""The core subcommands: normal paths and one-line errors."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from defed_core import Bundle
from defed_core.data import load_sample
from defed_core.testing import untrained_bundle, write_random_mnist
from gateway.cli import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


class TestPredict:
    def test_labels_image_files_as_json(
        self, bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        sample = load_sample("mnist")
        paths = []
        for i in range(3):
            paths.append(tmp_path / f"{i}.png")
            cv2.imwrite(str(paths[-1]), sample.images[i])
        code, out, _ = run(["predict", "--bundle", str(bundle_dir), "--json", *map(str, paths)], capsys)
        rows = [json.loads(line) for line in out.splitlines()]
        assert code == 0 and len(rows) == 3
        assert {"image", "label", "class", "adversarial", "original_label", "confidence", "scores"} <= set(rows[0])
        expected = Bundle.load(bundle_dir, "cpu").predict(sample.images[:3])
        assert [r["label"] for r in rows] == expected.label.tolist()

    def test_not_an_image_is_one_line(
        self, bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        junk = tmp_path / "junk.png"
        junk.write_bytes(b"\x00" * 10)
        code, _, err = run(["predict", "--bundle", str(bundle_dir), str(junk)], capsys)
        assert code == 2 and err.strip().count("\n") == 0 and "not an image" in err

    def test_unknown_bundle_name(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        img = tmp_path / "a.png"
        cv2.imwrite(str(img), np.zeros((28, 28), np.uint8))
        code, _, err = run(["predict", "--bundle", "nonesuch", str(img)], capsys)
        assert code == 2 and "no default bundle 'nonesuch'" in err


class TestCalibrate:
    def test_recalibrates_on_the_recorded_split(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        data = write_random_mnist(tmp_path / "d.npz", train=200, test=10)
        # Record a validation split in a fresh bundle, as training does.
        from dataclasses import replace

        from defed_core.data import load_dataset, split_validation

        bundle = untrained_bundle()
        split = split_validation(load_dataset(data).train, 50, seed=7)
        bundle = Bundle(
            replace(bundle.spec, dataset={"validation": split.record()}), bundle.classifier, bundle.denoisers
        )
        bundle.save(tmp_path / "b")
        code, _out, err = run(
            [
                "calibrate",
                "--bundle",
                str(tmp_path / "b"),
                "--data",
                str(data),
                "--rule",
                "fpr",
                "--target-fpr",
                "0.1",
                "--device",
                "cpu",
            ],
            capsys,
        )
        assert code == 0, err
        cal = Bundle.load(tmp_path / "b", "cpu").spec.calibration
        assert cal.rule == "fpr" and cal.images == 50 and cal.origin["seed"] == 7 and cal.target_fpr == 0.1

    def test_other_dataset_is_refused(
        self, bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = run(["calibrate", "--bundle", str(bundle_dir), "--data", str(tmp_path)], capsys)
        assert code == 2 and "records no validation split" in err


def test_train_with_missing_dataset_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.zeros(3))
    code, _, err = run(["train", "bundle", "--data", str(bad), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "neither the MNIST nor the CIFAR-10 keys" in err


def test_help_lists_every_core_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for command in ("train", "calibrate", "import-reference", "predict", "serve"):
        assert command in out
