"""Dataset loaders, the validation split and the image conversion rule."""

import gzip
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from defed_core.data import DatasetError, ImageSet, fit_image, load_dataset, read_idx, split_validation, to_tensor

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


class TestIdx:
    def test_standard_mnist_files_gzipped(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(0)
        for prefix, n in (("train", 20), ("t10k", 5)):
            write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), gz=True)
            write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)), gz=True)
        splits = load_dataset(tmp_path)
        assert splits.train.images.shape == (20, 28, 28, 1) and len(splits.test) == 5
        assert splits.train.labels.dtype == np.int64

    def test_truncated_file_refused(self, tmp_path: Path) -> None:
        write_idx(tmp_path / "x", np.zeros((4, 2, 2)))
        (tmp_path / "x").write_bytes((tmp_path / "x").read_bytes()[:-3])
        with pytest.raises(DatasetError, match="header says"):
            read_idx(tmp_path / "x")


class TestImageFolder:
    def test_classes_from_folder_names_and_conversion(self, tmp_path: Path) -> None:
        for cls, value in (("cat", 50), ("dog", 200)):
            (tmp_path / cls).mkdir()
            for i in range(5):
                cv2.imwrite(str(tmp_path / cls / f"{i}.png"), np.full((64, 48, 3), value, np.uint8))
        splits = load_dataset(tmp_path, channels=3, size=(32, 32))
        assert splits.train.classes == ["cat", "dog"]
        assert splits.train.images.shape[1:] == (32, 32, 3)
        assert len(splits.train) + len(splits.test) == 10

    def test_empty_folder_refused(self, tmp_path: Path) -> None:
        with pytest.raises(DatasetError, match="no images"):
            load_dataset(tmp_path)


@pytest.mark.skipif(not (SHARED / "mnist.npz").exists(), reason="shared datasets not present")
class TestPackedFiles:
    def test_mnist(self) -> None:
        splits = load_dataset(SHARED / "mnist.npz")
        assert splits.train.images.shape == (60000, 28, 28, 1) and len(splits.test) == 10000

    def test_cifar10_jpeg_decodes_to_rgb(self) -> None:
        splits = load_dataset(SHARED / "cifar10-jpeg.npz")
        assert splits.train.images.shape == (50000, 32, 32, 3)
        assert splits.train.classes[0] == "airplane"


class TestValidationSplit:
    def test_seeded_and_disjoint(self) -> None:
        data = ImageSet(np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1), np.arange(100), ["a"])
        a, b = split_validation(data, 10, seed=3), split_validation(data, 10, seed=3)
        assert a.record() == b.record() and a.record()["size"] == 10
        assert set(a.validation.labels).isdisjoint(a.train.labels)
        assert split_validation(data, 10, seed=4).record() != a.record()


class TestFitImage:
    def test_bgr_to_gray_uses_luma_and_resizes(self) -> None:
        red = np.zeros((56, 56, 3), np.uint8)
        red[..., 2] = 255  # BGR red
        out = fit_image(red, (1, 28, 28))
        assert out.shape == (28, 28, 1) and abs(int(out[0, 0, 0]) - 76) <= 1  # 0.299·255

    def test_gray_to_rgb_and_alpha_composited(self) -> None:
        assert fit_image(np.full((8, 8), 9, np.uint8), (3, 4, 4)).tolist() == np.full((4, 4, 3), 9).tolist()
        bgra = np.zeros((4, 4, 4), np.uint8)
        bgra[..., 0] = 200  # blue
        bgra[..., 3] = 255  # opaque: colour kept
        assert fit_image(bgra, (3, 4, 4))[0, 0].tolist() == [0, 0, 200]  # RGB order
        bgra[..., 3] = 0  # transparent: composited onto black
        assert fit_image(bgra, (3, 4, 4))[0, 0].tolist() == [0, 0, 0]

    def test_to_tensor_layout(self) -> None:
        t = to_tensor(np.full((2, 3, 4, 1), 255, np.uint8))
        assert t.shape == (2, 1, 3, 4) and float(t.max()) == 1.0
