"""The inference worker: the threads that own the model and its device.

It takes closed batches from the Batcher, stacks them into one tensor, calls `bundle.predict`
once per batch and hands the verdicts on, in batch order. Neither the MQTT network thread nor
the publisher ever touches the model, so a slow batch never stalls the connection's keepalive.

With ONNX Runtime as the engine it runs two lanes: while one lane's batch is on the model's
workers, the other stacks the next batch, or scores and hands on the previous one, so the
workers never wait for that serial work between batches (docs/performance.md).
"""

from __future__ import annotations

import functools
import math
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
    def __init__(
        self,
        bundle: Bundle,
        batcher: Batcher[Frame],
        on_batch: BatchHandler,
        stats: GatewayStats,
        on_failure: Callable[[], None],
        lanes: int | None = None,
    ) -> None:
        self.bundle = bundle
        self.batcher = batcher
        self.on_batch = on_batch
        self.stats = stats
        self.on_failure = on_failure
        # The torch engines run a batch on all the model's threads at once: a second lane would
        # only oversubscribe them. ONNX Runtime's workers take slices from both lanes' batches.
        lanes = lanes or (2 if bundle.backend == "onnxruntime" else 1)
        self._taking = threading.Lock()  # batches are taken one lane at a time, numbered in order
        self._turn = threading.Condition()  # and handed on in that order
        self._taken = self._handed = 0
        self._failed_at = math.inf  # the number of the first batch that failed
        self.threads = [
            threading.Thread(target=self.run, name=f"defed-inference-{i}", daemon=True) for i in range(lanes)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        """Until the batcher is closed and empty: batch → predict → hand on (in batch order)."""
        while True:
            with self._taking:
                batch = self.batcher.next_batch()
                number = self._taken
                self._taken += bool(batch)
            if not batch:
                break
            self.stats.batch(len(batch))
            try:
                decided = self.decide(batch)
            except Exception:
                # A model failure is a bug, not a frame's fault: stop the gateway (exit 1, so
                # systemd restarts it), leaving the frames unacknowledged for redelivery.
                log.exception("inference failed; stopping the gateway", batch_size=len(batch))
                with self._turn:
                    self._failed_at = min(self._failed_at, number)
                    self._turn.notify_all()
                self.on_failure()
                return
            with self._turn:
                # Earlier batches are still handed on; none after a failed one is.
                self._turn.wait_for(functools.partial(self._may_hand_on, number))
                if number > self._failed_at:
                    return
                self.on_batch(batch, decided)
                self._handed += 1
                self._turn.notify_all()
        log.debug("inference lane finished")

    def _may_hand_on(self, number: int) -> bool:
        """Batch `number`'s turn has come, or a batch before it failed (then it never comes)."""
        return self._handed == number or number > self._failed_at

    def decide(self, batch: list[Frame]) -> list[Verdict]:
        pixels = torch.from_numpy(np.stack([f.pixels for f in batch]))  # (N, H, W, C) uint8
        started = time.perf_counter()
        with torch.inference_mode():
            # One host→device copy and one device→host copy per batch (inside predict); the
            # copy back synchronises, so the time below includes the device's work.
            decision = self.bundle.predict(pixels)
        self.stats.inference(time.perf_counter() - started)
        return verdicts(decision)
