"""The gateway's counters: one source for `defed/stats` and the Prometheus metrics."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

WINDOW = 2048  # recent frames and batches the percentiles are computed over


class GatewayStats:
    """Thread-safe counters, plus recent latencies and batch sizes for percentiles."""

    COUNTERS = ("received", "labelled", "quarantined", "errors", "dropped", "batches", "audit_write_failures")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._latencies_ms: deque[float] = deque(maxlen=WINDOW)
        self._batch_sizes: deque[int] = deque(maxlen=WINDOW)
        self.queue_depth: Callable[[], int] = lambda: 0  # the app points this at the batcher's length
        self.audit_pending: Callable[[], int] = lambda: 0  # the publisher: frames waiting for the audit log

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def batch(self, size: int) -> None:
        with self._lock:
            self._counts["batches"] += 1
            self._batch_sizes.append(size)

    def latency(self, ms: float) -> None:
        with self._lock:
            self._latencies_ms.append(ms)

    def snapshot(self) -> dict[str, Any]:
        """The `defed/stats` payload."""
        with self._lock:
            counts = {name: self._counts[name] for name in self.COUNTERS}
            latencies = np.array(self._latencies_ms, dtype=np.float64)
            sizes = np.array(self._batch_sizes, dtype=np.float64)
        return {
            **counts,
            "queue_depth": self.queue_depth(),
            "audit_pending": self.audit_pending(),
            "batch_size": percentiles(sizes, mean=True),
            "latency_ms": percentiles(latencies),
        }


def percentiles(values: np.ndarray, mean: bool = False) -> dict[str, float | None]:
    if values.size == 0:
        empty: dict[str, float | None] = {"p50": None, "p95": None, "p99": None}
        return {"mean": None, **empty} if mean else empty
    p50, p95, p99 = (round(float(v), 3) for v in np.percentile(values, [50, 95, 99]))
    shown: dict[str, float | None] = {"p50": p50, "p95": p95, "p99": p99}
    return {"mean": round(float(values.mean()), 3), **shown} if mean else shown


class StatsCollector(Collector):
    """Exposes GatewayStats to Prometheus, read at scrape time."""

    def __init__(self, stats: GatewayStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        snap = self.stats.snapshot()
        for name in GatewayStats.COUNTERS:
            yield CounterMetricFamily(f"defed_frames_{name}" if name != "batches" else "defed_batches",
                                      f"Frames {name}" if name != "batches" else "Batches run", value=snap[name])
        yield GaugeMetricFamily("defed_queue_depth", "Frames waiting for a batch", value=snap["queue_depth"])
        yield GaugeMetricFamily("defed_audit_pending", "Quarantined frames held unacknowledged until the audit log "
                                "can be written", value=snap["audit_pending"])
        latency = GaugeMetricFamily("defed_latency_ms", "Receipt-to-publish latency percentiles (recent frames)",
                                    labels=["quantile"])
        for q, v in snap["latency_ms"].items():
            if v is not None:
                latency.add_metric([q], v)
        yield latency
