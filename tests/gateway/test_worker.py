"""The inference worker's lanes: batches overlap on the model but are handed on in order."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from defed_core import Bundle
from defed_core.testing import untrained_bundle
from gateway.batcher import Batcher
from gateway.frames import Delivery, Frame, Verdict
from gateway.stats import GatewayStats
from gateway.worker import InferenceWorker


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "b"
    untrained_bundle(path)
    return path


def frames(n: int) -> list[Frame]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        delivery = Delivery(f"cameras/c{i % 3}/frames", f"c{i % 3}", b"", i + 1, 1, time.monotonic(), time.time(), {})
        out.append(Frame(delivery, f"f{i}", None, rng.integers(0, 256, (28, 28, 1), dtype=np.uint8), b""))
    return out


class Jittery:
    """The bundle's predict, each call delayed at random so that later batches often finish first."""

    def __init__(self, bundle: Bundle, fail_on_call: int | None = None) -> None:
        self.bundle, self.fail_on_call = bundle, fail_on_call
        self.calls = 0
        self.lock = threading.Lock()
        self.concurrent = self.most_concurrent = 0
        self.random = random.Random(1)

    def __call__(self, pixels: torch.Tensor):  # type: ignore[no-untyped-def]
        with self.lock:
            self.calls += 1
            call = self.calls
            self.concurrent += 1
            self.most_concurrent = max(self.most_concurrent, self.concurrent)
            delay = self.random.uniform(0, 0.02)
        try:
            time.sleep(delay)
            if call == self.fail_on_call:
                raise RuntimeError("model failure")
            return self.bundle.predict_plain(pixels)
        finally:
            with self.lock:
                self.concurrent -= 1


def run_worker(bundle_dir: Path, n: int, fail_on_call: int | None = None):  # type: ignore[no-untyped-def]
    bundle = Bundle.load(bundle_dir, "cpu", backend="onnxruntime")
    jitter = Jittery(bundle, fail_on_call)
    bundle.predict_plain = bundle.predict  # type: ignore[attr-defined]
    bundle.predict = jitter  # type: ignore[method-assign]
    batcher: Batcher[Frame] = Batcher(max_batch=4, max_wait_ms=1, capacity=1000)
    handed: list[tuple[list[str], list[Verdict]]] = []
    failures: list[bool] = []
    worker = InferenceWorker(
        bundle,
        batcher,
        lambda b, v: handed.append(([f.frame_id for f in b], v)),
        GatewayStats(),
        lambda: failures.append(True),
    )
    assert len(worker.threads) == 2  # ONNX Runtime: two lanes
    worker.start()
    for frame in frames(n):
        assert batcher.put(frame)
    batcher.close()
    for thread in worker.threads:
        thread.join(30)
        assert not thread.is_alive()
    return handed, failures, jitter


def test_lanes_overlap_and_hand_batches_on_in_the_order_they_were_taken(bundle_dir: Path) -> None:
    handed, failures, jitter = run_worker(bundle_dir, 60)
    assert not failures
    assert [frame_id for ids, _ in handed for frame_id in ids] == [f"f{i}" for i in range(60)]
    assert all(len(ids) == len(verdicts) for ids, verdicts in handed)
    assert jitter.most_concurrent == 2  # the two lanes really had batches on the model together


def test_a_failed_batch_stops_the_hand_on_and_reports_once(bundle_dir: Path) -> None:
    handed, failures, _ = run_worker(bundle_dir, 40, fail_on_call=3)
    assert failures == [True]
    # Batches are numbered as they are taken: every one before the failed batch is handed on, in
    # order; the failed one and every later one are not (their frames stay unacknowledged, for
    # the broker to redeliver).
    ids = [frame_id for batch, _ in handed for frame_id in batch]
    assert ids == [f"f{i}" for i in range(len(ids))]
    assert len(ids) < 40


@pytest.mark.parametrize("backend", ["torch"])
def test_torch_engines_run_one_lane(bundle_dir: Path, backend: str) -> None:
    bundle = Bundle.load(bundle_dir, "cpu", backend=backend)  # type: ignore[arg-type]
    worker = InferenceWorker(bundle, Batcher(4, 1, 10), lambda b, v: None, GatewayStats(), lambda: None)
    assert len(worker.threads) == 1
