"""ONNX Runtime's batch-parallel workers, the one-channel convolution rewrite, and thread hand-out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from defed_core.bundle import Bundle
from defed_core.fast import ChannelSumConv, channel_sum_convs
from defed_core.onnx_backend import SLICE_FRAMES, OnnxEnsemble, batch_slices, export_graph
from defed_core.testing import untrained_bundle


@pytest.mark.parametrize(
    ("n", "workers", "sizes"),
    [
        (0, 2, []),
        (1, 2, [1]),
        (2, 4, [1, 1]),
        (8, 2, [4, 4]),
        (16, 2, [8, 8]),
        (64, 2, [8] * 8),
        (65, 2, [7, 7, 8, 7, 7, 7, 8, 7, 7]),  # as even as can be, none over SLICE_FRAMES (8)
        (7, 1, [7]),
    ],
)
def test_batch_slices_cover_the_batch_in_order_with_no_slice_too_big(n: int, workers: int, sizes: list[int]) -> None:
    slices = batch_slices(n, workers)
    assert [s.stop - s.start for s in slices] == sizes
    assert [i for s in slices for i in range(s.start, s.stop)] == list(range(n))
    assert all(s.stop - s.start <= SLICE_FRAMES for s in slices)


def test_batch_parallel_outputs_equal_one_run_over_the_whole_batch() -> None:
    """Frames are independent: slices run on 3 workers give bit-identical outputs, in frame order."""
    bundle = untrained_bundle(sigmas=(10.0, 20.0, 30.0))
    graph = export_graph(bundle.fast_ensemble(engine="onnxruntime"), bundle.input_shape)
    x = torch.rand(70, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    whole = OnnxEnsemble(graph, threads=1)(x)
    sliced = OnnxEnsemble(graph, threads=3)(x)
    assert sliced.denoised.shape == (3, 70, 1, 28, 28) and sliced.denoised_logits.shape == (3, 70, 10)
    for a, b in zip(whole.__dict__.values(), sliced.__dict__.values(), strict=True):
        assert torch.equal(a, b)


def test_a_convolution_to_one_channel_becomes_a_per_channel_convolution_and_a_sum() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 1, 3, padding=1)
    x = torch.randn(4, 16, 28, 28)
    with torch.no_grad():
        assert (ChannelSumConv(conv)(x) - conv(x)).abs().max() <= 1e-5
    model = nn.Sequential(nn.Conv2d(16, 1, 3, padding=1), nn.Conv2d(16, 3, 3, padding=1), nn.Conv2d(1, 1, 3))
    channel_sum_convs(model)
    # Only a plain convolution to one channel from several is rewritten.
    assert [type(m).__name__ for m in model] == ["ChannelSumConv", "Conv2d", "Conv2d"]


def test_use_threads_gives_onnxruntime_the_workers_and_torch_one_thread(bundle_dir: Path) -> None:
    onnx = Bundle.load(bundle_dir, "cpu", backend="onnxruntime")
    onnx.use_threads(3)
    assert isinstance(onnx.fast, OnnxEnsemble) and onnx.fast.threads == 3
    assert torch.get_num_threads() == 1
    before = onnx.predict(torch.rand(40, 1, 28, 28)).scores.shape
    onnx.use_threads(2)  # a new worker count replaces the running pool
    assert onnx.fast.threads == 2 and onnx.predict(torch.rand(40, 1, 28, 28)).scores.shape == before
    Bundle.load(bundle_dir, "cpu", backend="torch").use_threads(3)
    assert torch.get_num_threads() == 3
    with pytest.raises(ValueError, match="at least 1"):
        onnx.use_threads(0)
