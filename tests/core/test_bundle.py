"""Bundle files: round trip, integrity check, input validation, metadata."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from defed_core import Bundle, BundleError, InputError
from defed_core.testing import untrained_bundle


@pytest.fixture(scope="module")
def saved(bundle_dir: Path) -> Path:
    return bundle_dir


class TestRoundTrip:
    def test_loaded_bundle_decides_as_the_saved_one(self, saved: Path) -> None:
        original = untrained_bundle()  # same seed → same weights and calibration
        loaded = Bundle.load(saved, device="cpu", fast=False)
        x = torch.rand(6, 1, 28, 28)
        a, b = original.predict(x), loaded.predict(x)
        assert torch.allclose(a.scores, b.scores, atol=1e-6)
        assert torch.equal(a.label, b.label) and torch.equal(a.member_flags, b.member_flags)

    def test_metadata(self, saved: Path) -> None:
        bundle = Bundle.load(saved, device="cpu")
        doc = json.loads((saved / "bundle.json").read_text())
        assert bundle.input_shape == (1, 28, 28)
        assert bundle.classes == [str(i) for i in range(10)]
        assert [m["sigma"] for m in doc["members"]] == [20.0, 40.0]
        assert all(len(m["sha256"]) == 64 for m in doc["members"])
        assert doc["calibration"]["rule"] == "mean_std" and len(doc["calibration"]["thresholds"]) == 2

    def test_weights_are_not_pickles(self, saved: Path) -> None:
        """Weight files are safetensors: a JSON header, no pickle opcodes."""
        raw = (saved / "member-0.safetensors").read_bytes()
        header_len = int.from_bytes(raw[:8], "little")
        assert json.loads(raw[8 : 8 + header_len])


class TestIntegrity:
    def test_tampered_weight_file_is_refused(self, saved: Path, tmp_path: Path) -> None:
        copy = tmp_path / "b"
        copy.mkdir()
        for f in saved.iterdir():
            (copy / f.name).write_bytes(f.read_bytes())
        raw = bytearray((copy / "member-1.safetensors").read_bytes())
        raw[-1] ^= 0xFF
        (copy / "member-1.safetensors").write_bytes(bytes(raw))
        with pytest.raises(BundleError, match=r"member-1\.safetensors: SHA-256 .* does not match"):
            Bundle.load(copy)

    def test_missing_directory(self, tmp_path: Path) -> None:
        with pytest.raises(BundleError, match=r"no bundle\.json"):
            Bundle.load(tmp_path)

    def test_unknown_default(self) -> None:
        with pytest.raises(BundleError, match="no default bundle 'imagenet'"):
            Bundle.load_default("imagenet")


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return untrained_bundle()


class TestInput:
    def test_uint8_nhwc_equals_float_nchw(self, bundle: Bundle) -> None:
        img = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
        a = bundle.predict(img)
        b = bundle.predict(torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255)
        assert torch.allclose(a.scores, b.scores)

    @pytest.mark.parametrize(
        ("frames", "message"),
        [
            (torch.rand(2, 3, 28, 28), r"shape \(N, 1, 28, 28\)"),
            (torch.rand(1, 28, 28), r"shape \(N, 1, 28, 28\)"),
            (torch.full((1, 1, 28, 28), float("nan")), "NaN"),
            (torch.full((1, 1, 28, 28), 2.0), r"within \[0, 1\]"),
            (torch.zeros(1, 1, 28, 28, dtype=torch.int32), "dtype torch.int32"),
            (np.zeros((1, 28, 28, 3), np.uint8), r"shape \(N, 28, 28, 1\)"),
            ([[0.0]], "torch tensor or numpy array"),
        ],
    )
    def test_bad_frames_are_refused_clearly(self, bundle: Bundle, frames: object, message: str) -> None:
        with pytest.raises(InputError, match=message):
            bundle.predict(frames)  # type: ignore[arg-type]

    def test_decision_shapes(self, bundle: Bundle) -> None:
        d = bundle.predict(torch.rand(5, 1, 28, 28))
        assert d.label.shape == d.original_label.shape == d.adversarial.shape == d.confidence.shape == (5,)
        assert d.scores.shape == d.member_flags.shape == (5, 2)
        assert d.adversarial.dtype == torch.bool and d.label.device.type == "cpu"
