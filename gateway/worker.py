"""The inference worker: the one thread that owns the model and its device.

It takes closed batches from the Batcher, stacks them into one tensor, calls `bundle.predict`
once per batch and hands the verdicts on. Neither the MQTT network thread nor the publisher ever
touches the model, so a slow batch never stalls the connection's keepalive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import structlog
import torch

from defed_core import Bundle
from gateway.batcher import Batcher
from gateway.decision import verdicts
from gateway.frames import Frame, Verdict
from gateway.stats import GatewayStats

log = structlog.get_logger("gateway.worker")

BatchHandler = Callable[[list[Frame], list[Verdict]], None]


def warm_up(bundle: Bundle, max_batch: int) -> None:
    """Run the largest and the smallest batch once, so the first real frames do not pay for
    lazy initialisation (allocator, kernels, CUDA context)."""
    c, h, w = bundle.input_shape
    for n in sorted({max_batch, 1}, reverse=True):
        bundle.predict(torch.zeros(n, h, w, c, dtype=torch.uint8))


class InferenceWorker:
    def __init__(self, bundle: Bundle, batcher: Batcher[Frame], on_batch: BatchHandler, stats: GatewayStats,
                 on_failure: Callable[[], None]) -> None:
        self.bundle = bundle
        self.batcher = batcher
        self.on_batch = on_batch
        self.stats = stats
        self.on_failure = on_failure
        self.thread = threading.Thread(target=self.run, name="defed-inference", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def run(self) -> None:
        """Until the batcher is closed and empty: batch → predict → hand on."""
        while batch := self.batcher.next_batch():
            self.stats.batch(len(batch))
            try:
                decided = self.decide(batch)
            except Exception:
                # A model failure is a bug, not a frame's fault: stop the gateway (exit 1, so
                # systemd restarts it), leaving the frames unacknowledged for redelivery.
                log.exception("inference failed; stopping the gateway", batch_size=len(batch))
                self.on_failure()
                return
            self.on_batch(batch, decided)
        log.debug("inference worker finished")

    def decide(self, batch: list[Frame]) -> list[Verdict]:
        pixels = torch.from_numpy(np.stack([f.pixels for f in batch]))  # (N, H, W, C) uint8
        started = time.perf_counter()
        with torch.inference_mode():
            # One host→device copy and one device→host copy per batch (inside predict); the
            # copy back synchronises, so the time below includes the device's work.
            decision = self.bundle.predict(pixels)
        self.stats.inference(time.perf_counter() - started)
        return verdicts(decision)
