"""The shipped test-set samples: what `load_sample` gives, and that `tools/cut_samples.py` re-makes them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from defed_core.data import DatasetError, decode_jpeg_blob, load_sample

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT.parent / "shared" / "datasets"
SAMPLES = ROOT / "defed_core" / "samples"


def cut_samples() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cut_samples", ROOT / "tools" / "cut_samples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestLoadSample:
    def test_cifar10_is_rgb_uint8_with_every_class(self) -> None:
        """`cifar10`: 256 RGB uint8 images (N, 32, 32, 3), the ten class names, every class present."""
        sample = load_sample("cifar10")
        assert sample.images.shape == (256, 32, 32, 3) and sample.images.dtype == np.uint8
        assert sample.classes[:2] == ["airplane", "automobile"] and len(sample.classes) == 10
        assert set(sample.labels.tolist()) == set(range(10))
        # CIFAR-10's mean colour is reddest and least blue: a swapped channel order would show.
        r, _, b = sample.images.reshape(-1, 3).mean(axis=0)
        assert r > b + 5

    def test_mnist_is_unchanged(self) -> None:
        """`mnist`: 256 gray images (N, 28, 28, 1) with digit class names."""
        sample = load_sample("mnist")
        assert sample.images.shape == (256, 28, 28, 1) and sample.classes == [str(d) for d in range(10)]

    def test_unknown_sample_is_a_dataset_error(self) -> None:
        """A name with no shipped file raises DatasetError."""
        with pytest.raises(DatasetError, match="no shipped sample"):
            load_sample("imagenet")

    def test_files_stay_small(self) -> None:
        """The committed samples are small (they ship in the wheel)."""
        assert all(path.stat().st_size < 150_000 for path in SAMPLES.glob("*.npz"))


@pytest.mark.skipif(not (DATASETS / "cifar10-jpeg.npz").is_file(), reason="needs ../shared/datasets")
class TestCut:
    def test_cifar10_holds_the_original_jpeg_files_of_its_test_indices(self) -> None:
        """Each stored JPEG is byte for byte the dataset's test file at the stored index, with its label."""
        with np.load(SAMPLES / "cifar10-test-sample.npz") as sample, np.load(DATASETS / "cifar10-jpeg.npz") as data:
            jpeg, offsets, indices = sample["jpeg"], sample["offsets"], sample["indices"]
            blob, data_offsets = data["test_jpeg"], data["test_offsets"]
            for k in (0, 1, 100, 255):
                i = indices[k]
                ours = jpeg[offsets[k] : offsets[k + 1]]
                assert np.array_equal(ours, blob[data_offsets[i] : data_offsets[i + 1]])
                assert sample["labels"][k] == data["y_test"][i]
            assert np.array_equal(decode_jpeg_blob(jpeg, offsets), load_sample("cifar10").images)

    def test_tool_remakes_both_committed_samples(self) -> None:
        """`tools/cut_samples.py` cuts exactly the committed arrays (its --check)."""
        tool = cut_samples()
        for name, cut in tool.CUTS.items():
            assert tool.same(SAMPLES / f"{name}-test-sample.npz", cut(DATASETS)), name
