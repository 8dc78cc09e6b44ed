"""The gateway's counters: one source for `defed/stats` and the Prometheus metrics."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

WINDOW = 2048  # recent frames and batches the percentiles are computed over

# Counters kept per device too when `metrics.per_device` is on (a fleet of thousands of cameras
# would otherwise make thousands of series of each).
PER_FRAME = ("received", "labelled", "quarantined", "dropped")
LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
INFERENCE_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class GatewayStats:
    """Thread-safe counters, recent latencies and batch sizes for percentiles, and histograms."""

    COUNTERS = ("received", "labelled", "quarantined", "errors", "dropped", "batches", "audit_write_failures")

    def __init__(self, per_device: bool = False) -> None:
        self.per_device = per_device
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._by_device: Counter[tuple[str, str]] = Counter()  # (counter, device), only when per_device
        self._errors: Counter[tuple[str, str]] = Counter()  # (reason, device or "")
        self._latencies_ms: deque[float] = deque(maxlen=WINDOW)
        self._batch_sizes: deque[int] = deque(maxlen=WINDOW)
        # Not registered anywhere: StatsCollector exposes them with the rest.
        self.latency_seconds = Histogram(
            "defed_frame_latency_seconds",
            "Receipt-to-publish latency of a frame",
            buckets=LATENCY_BUCKETS_S,
            registry=None,
        )
        self.batch_size = Histogram(
            "defed_batch_size", "Frames per inference batch", buckets=BATCH_BUCKETS, registry=None
        )
        self.inference_seconds = Histogram(
            "defed_inference_seconds", "Time of one batch's bundle.predict", buckets=INFERENCE_BUCKETS_S, registry=None
        )
        self.queue_depth: Callable[[], int] = lambda: 0  # the app points this at the batcher's length
        self.audit_pending: Callable[[], int] = lambda: 0  # the publisher: frames waiting for the audit log
        self.mqtt_connected: Callable[[], bool] = lambda: False  # and this at the broker link

    def count(self, name: str, n: int = 1, device: str | None = None) -> None:
        with self._lock:
            self._counts[name] += n
            if self.per_device and device is not None and name in PER_FRAME:
                self._by_device[(name, device)] += n

    def error(self, reason: str, device: str | None = None) -> None:
        """A frame answered with an error event; `reason` is its `error` code."""
        self.count("errors", device=device)
        with self._lock:
            self._errors[(reason, device if self.per_device and device is not None else "")] += 1

    def batch(self, size: int) -> None:
        with self._lock:
            self._counts["batches"] += 1
            self._batch_sizes.append(size)
        self.batch_size.observe(size)

    def latency(self, ms: float) -> None:
        with self._lock:
            self._latencies_ms.append(ms)
        self.latency_seconds.observe(ms / 1000.0)

    def inference(self, seconds: float) -> None:
        self.inference_seconds.observe(seconds)

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

    def per_frame_counts(self) -> dict[str, dict[str, int]]:
        """{counter: {device: n}}; empty unless per_device."""
        with self._lock:
            found: dict[str, dict[str, int]] = {name: {} for name in PER_FRAME}
            for (name, device), n in self._by_device.items():
                found[name][device] = n
            return found

    def errors_by_reason(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._errors)


def percentiles(values: np.ndarray, mean: bool = False) -> dict[str, float | None]:
    if values.size == 0:
        empty: dict[str, float | None] = {"p50": None, "p95": None, "p99": None}
        return {"mean": None, **empty} if mean else empty
    p50, p95, p99 = (round(float(v), 3) for v in np.percentile(values, [50, 95, 99]))
    shown: dict[str, float | None] = {"p50": p50, "p95": p95, "p99": p99}
    return {"mean": round(float(values.mean()), 3), **shown} if mean else shown


HELP = {
    "received": "Frames taken from the broker",
    "labelled": "Frames answered with a label (benign)",
    "quarantined": "Frames answered with a quarantine event (flagged as adversarial)",
    "dropped": "Frames acknowledged without a result because the queue was full",
}


class StatsCollector(Collector):
    """Exposes GatewayStats to Prometheus, read at scrape time."""

    def __init__(self, stats: GatewayStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        snap = self.stats.snapshot()
        yield from self.frame_counters(snap)
        yield CounterMetricFamily("defed_batches", "Inference batches run", value=snap["batches"])
        yield CounterMetricFamily(
            "defed_audit_write_failures",
            "Audit commits that failed (each retry of held frames counts)",
            value=snap["audit_write_failures"],
        )
        yield GaugeMetricFamily("defed_queue_depth", "Frames waiting for a batch", value=snap["queue_depth"])
        yield GaugeMetricFamily(
            "defed_audit_pending",
            "Quarantined frames held unacknowledged until the audit log can be written",
            value=snap["audit_pending"],
        )
        yield GaugeMetricFamily(
            "defed_mqtt_connected",
            "1 while connected to the broker, else 0",
            value=1.0 if self.stats.mqtt_connected() else 0.0,
        )
        for histogram in (self.stats.latency_seconds, self.stats.batch_size, self.stats.inference_seconds):
            yield from histogram.collect()
        latency = GaugeMetricFamily(
            "defed_latency_ms", "Receipt-to-publish latency percentiles (recent frames)", labels=["quantile"]
        )
        for q, v in snap["latency_ms"].items():
            if v is not None:
                latency.add_metric([q], v)
        yield latency

    def frame_counters(self, snap: dict[str, Any]) -> Iterator[Metric]:
        per_device = self.stats.per_frame_counts() if self.stats.per_device else None
        for name, help_text in HELP.items():
            if per_device is None:
                yield CounterMetricFamily(f"defed_frames_{name}", help_text, value=snap[name])
                continue
            family = CounterMetricFamily(f"defed_frames_{name}", help_text, labels=["device"])
            for device, n in sorted(per_device[name].items()):
                family.add_metric([device], n)
            yield family
        labels = ["reason", "device"] if per_device is not None else ["reason"]
        errors = CounterMetricFamily(
            "defed_frames_errors", "Frames answered with an error event, by reason", labels=labels
        )
        for (reason, device), n in sorted(self.stats.errors_by_reason().items()):
            errors.add_metric([reason, device] if per_device is not None else [reason], n)
        yield errors
