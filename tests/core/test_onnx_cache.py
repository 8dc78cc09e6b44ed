"""ONNX Runtime as the `auto` engine on a CPU, and its exported graph kept on disk between loads."""

import logging
from pathlib import Path

import pytest
import torch

import defed_core.bundle
from defed_core.bundle import Bundle
from defed_core.calibration import Calibration
from defed_core.fast import FastEnsemble
from defed_core.onnx_backend import OnnxEnsemble, cached_graph, graph_key
from defed_core.testing import untrained_bundle

X = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(7))


def forbid_export(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args: object) -> bytes:
        raise AssertionError("the graph was exported although the cache holds it")

    monkeypatch.setattr(defed_core.bundle, "export_graph", fail)


def test_auto_is_onnxruntime_on_a_cpu_in_float32_and_torch_in_half_precision(bundle_dir: Path) -> None:
    auto = Bundle.load(bundle_dir, "cpu", backend="auto")
    assert auto.backend == "onnxruntime" and isinstance(auto.fast, OnnxEnsemble)
    half = Bundle.load(bundle_dir, "cpu", backend="auto", precision="bf16")
    assert half.backend == "torch" and isinstance(half.fast, FastEnsemble)
    assert Bundle.load(bundle_dir, "cpu").backend == "torch"  # the library's default stays torch


def test_a_cached_graph_is_read_back_instead_of_exported(bundle_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = Bundle.load(bundle_dir, "cpu", backend="onnxruntime", cache_dir=cache)
    stored = list(cache.glob("*.onnx"))
    assert len(stored) == 1 and stored[0].stat().st_size > 0
    forbid_export(monkeypatch)
    again = Bundle.load(bundle_dir, "cpu", backend="onnxruntime", cache_dir=cache)
    torch_fast = Bundle.load(bundle_dir, "cpu", backend="torch")
    expected = torch_fast.predict(X)
    for bundle in (first, again):
        got = bundle.predict(X)
        assert (got.scores - expected.scores).abs().max() <= 1e-4
        assert torch.equal(got.adversarial, expected.adversarial)


def test_a_recalibrated_bundle_keeps_its_graph(bundle_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Thresholds are not part of the graph: a new calibration must not cost an export."""
    cache = tmp_path / "cache"
    bundle = Bundle.load(bundle_dir, "cpu", backend="onnxruntime", cache_dir=cache)
    forbid_export(monkeypatch)
    k = len(bundle.spec.members)
    recalibrated = bundle.with_calibration(Calibration("mean_std", [0.0] * k, [1.0] * k, [1e9] * k, images=2, k=3.0))
    assert recalibrated.backend == "onnxruntime"
    assert not recalibrated.predict(X).adversarial.any()


def test_other_weights_get_another_graph_and_the_old_one_is_removed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    a = untrained_bundle(tmp_path / "a", seed=1)
    b = untrained_bundle(tmp_path / "b", seed=2)
    key_a = graph_key([a.classifier, *a.denoisers], a.input_shape)
    assert key_a != graph_key([b.classifier, *b.denoisers], b.input_shape)
    loaded_a = Bundle.load(tmp_path / "a", "cpu", backend="onnxruntime", cache_dir=cache)
    (graph_a,) = cache.glob("*.onnx")
    loaded_b = Bundle.load(tmp_path / "b", "cpu", backend="onnxruntime", cache_dir=cache)
    (graph_b,) = cache.glob("*.onnx")  # both are named "untrained": the newer replaces the older
    assert graph_a != graph_b
    assert not torch.allclose(loaded_a.scores(X), loaded_b.scores(X))
    assert (loaded_b.scores(X) - Bundle.load(tmp_path / "b", "cpu").scores(X)).abs().max() <= 1e-4


def test_an_unwritable_cache_costs_time_not_the_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should be")
    with caplog.at_level(logging.WARNING, logger="defed_core.onnx_backend"):
        graph = cached_graph("0" * 64, blocker / "cache", "mnist", lambda: b"graph")
    assert graph == b"graph"
    assert "cannot store the ONNX graph" in caplog.text


def test_an_unreadable_cached_graph_is_exported_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    (cache / f"mnist-{'0' * 24}.onnx").mkdir(parents=True)  # a directory under the graph's name
    with caplog.at_level(logging.WARNING, logger="defed_core.onnx_backend"):
        graph = cached_graph("0" * 64, cache, "mnist", lambda: b"graph")
    assert graph == b"graph"
    assert "cannot read the cached ONNX graph" in caplog.text


def test_without_a_cache_directory_every_load_exports(tmp_path: Path) -> None:
    calls = []

    def build() -> bytes:
        calls.append(1)
        return b"graph"

    assert cached_graph("0" * 64, None, "mnist", build) == b"graph"
    assert cached_graph("0" * 64, None, "mnist", build) == b"graph"
    assert len(calls) == 2 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["../../escape", "a/b", "*", "..", ""])
def test_a_bundle_name_cannot_steer_the_cache_path(tmp_path: Path, name: str) -> None:
    cache = tmp_path / "deep" / "cache"
    neighbour = cache / f"mnist-{'1' * 24}.onnx"  # another bundle's graph, which "*" must not remove
    neighbour.parent.mkdir(parents=True)
    neighbour.write_bytes(b"other")
    assert cached_graph("0" * 64, cache, name, lambda: b"graph") == b"graph"
    written = [p for p in tmp_path.rglob("*.onnx") if p != neighbour]
    assert len(written) == 1 and written[0].parent == cache
    assert neighbour.read_bytes() == b"other"


def test_a_damaged_cached_graph_is_exported_again(bundle_dir: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A graph file that ONNX Runtime cannot open must not keep the service down at every restart."""
    cache = tmp_path / "cache"
    Bundle.load(bundle_dir, "cpu", backend="onnxruntime", cache_dir=cache)
    (graph,) = cache.glob("*.onnx")
    good = graph.read_bytes()
    graph.write_bytes(good[: len(good) // 3])  # truncated, as by a full disk
    with caplog.at_level(logging.WARNING, logger="defed_core.onnx_backend"):
        bundle = Bundle.load(bundle_dir, "cpu", backend="onnxruntime", cache_dir=cache)
    assert "does not load" in caplog.text
    assert graph.read_bytes() == good  # replaced by a fresh export
    expected = Bundle.load(bundle_dir, "cpu", backend="torch").predict(X)
    assert (bundle.predict(X).scores - expected.scores).abs().max() <= 1e-4
