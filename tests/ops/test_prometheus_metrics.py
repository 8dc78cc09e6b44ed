"""Prometheus metrics: scraped over HTTP from a real gateway and checked against the frames sent."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from gateway_helpers import (
    Camera,
    ResultListener,
    attacked,
    envelope,
    gateway_settings,
    mnist_digits,
    png,
    running_gateway,
)
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from defed_core.calibration import Calibration
from defed_core.testing import untrained_bundle
from gateway.broker import PrivateBroker, free_port
from gateway.stats import GatewayStats, StatsCollector

BENIGN, ATTACKED = 10, 6
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def separating_bundle(path: Path, benign: np.ndarray, attacks: np.ndarray) -> tuple[Path, np.ndarray, np.ndarray]:
    """An untrained bundle whose second member's threshold lies halfway between the scores of the chosen
    benign digits (the lowest) and the chosen attacked ones (the highest), so routing cannot flip on a
    rounding difference between batches. Returns the bundle and the digits it labels and flags."""
    bundle = untrained_bundle()
    clean = bundle.scores(torch.from_numpy(benign[..., None]))[:, 1].numpy()  # (N,)
    noisy = bundle.scores(torch.from_numpy(attacks[..., None]))[:, 1].numpy()
    keep_clean, keep_noisy = np.argsort(clean)[:BENIGN], np.argsort(noisy)[-ATTACKED:]
    low, high = clean[keep_clean].max(), noisy[keep_noisy].min()
    assert high - low > 1e-3, "no clear gap between the chosen benign and attacked digits"
    k = len(bundle.spec.members)
    thresholds = [1e9, float(low + high) / 2] + [1e9] * (k - 2)
    bundle.with_calibration(Calibration("mean_std", [0.0] * k, [1.0] * k, thresholds, images=2, k=3.0)).save(path)
    return path, benign[keep_clean], attacks[keep_noisy]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape_until(port: int, condition: Callable[[Samples], bool], timeout: float = 10.0) -> Samples:
    """Counters are bumped just after a result is published: scrape until they have caught up."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if condition(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)  # nothing to wait on in another process but its answers


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class TestMetricsEndpoint:
    def test_counters_match_the_frames_sent(self, broker: PrivateBroker, tmp_path: Path) -> None:
        """10 benign + 6 attacked digits, one undecodable payload, one bad envelope: every counter and
        histogram count on /metrics agrees with what was sent and what the gateway answered."""
        digits = mnist_digits(60)
        bundle, benign, attacks = separating_bundle(tmp_path / "bundle", digits[:30], attacked(digits[30:]))
        port = free_port()
        settings = gateway_settings(tmp_path / "state", broker.port, bundle, metrics={"listen": f"127.0.0.1:{port}"})
        listener = ResultListener(broker.port)
        camera = Camera(broker.port)
        try:
            with running_gateway(settings, tmp_path):
                assert value(scrape(port), "defed_mqtt_connected") == 1.0
                for i, image in enumerate([*benign, *attacks]):
                    camera.send(f"cam-{i % 3}", png(image), frame_id=f"f{i}")
                camera.send("cam-0", b"\x00garbage, not an image", frame_id="junk")
                camera.send("cam-1", envelope(b"x")[:-3] + b"!!", frame_id="bad")
                keys = {(f"cam-{i % 3}", f"f{i}") for i in range(BENIGN + ATTACKED)} | {("cam-0", "junk")}
                assert listener.wait_for_frames(keys, timeout=60), listener.missing(keys)
                assert listener.wait_for(lambda s: len(s.results()) == BENIGN + ATTACKED + 2, timeout=30)
                frames = BENIGN + ATTACKED + 2
                m = scrape_until(
                    port,
                    lambda m: (
                        value(m, "defed_frames_received_total") == frames
                        and value(m, "defed_frame_latency_seconds_count") == BENIGN + ATTACKED
                    ),
                )
        finally:
            camera.close()
            listener.close()
        quarantined = [p for t, p in listener.results() if t.endswith("/quarantine")]
        assert len(quarantined) == ATTACKED
        assert value(m, "defed_frames_received_total") == frames
        assert value(m, "defed_frames_labelled_total") == BENIGN
        assert value(m, "defed_frames_quarantined_total") == ATTACKED
        assert value(m, "defed_frames_errors_total", reason="undecodable_image") == 1
        assert value(m, "defed_frames_errors_total", reason="bad_envelope") == 1
        assert value(m, "defed_frames_dropped_total") == 0 and value(m, "defed_audit_write_failures_total") == 0
        assert value(m, "defed_queue_depth") == 0 and value(m, "defed_mqtt_connected") == 1
        assert value(m, "defed_audit_pending") == 0
        # Histograms: one latency per answered frame, one batch size and inference time per batch.
        batches = value(m, "defed_batches_total")
        assert 1 <= batches <= BENIGN + ATTACKED
        assert value(m, "defed_batch_size_count") == value(m, "defed_inference_seconds_count") == batches
        assert value(m, "defed_batch_size_sum") == BENIGN + ATTACKED
        assert value(m, "defed_frame_latency_seconds_count") == BENIGN + ATTACKED
        assert value(m, "defed_frame_latency_seconds_bucket", le="+Inf") == BENIGN + ATTACKED
        assert value(m, "defed_inference_seconds_sum") > 0
        # No per-device series unless asked for.
        assert not any(dict(labels).get("device") for _, labels in m)


class TestPerDeviceLabels:
    def exposition(self, per_device: bool) -> Samples:
        stats = GatewayStats(per_device=per_device)
        for device in ("cam-1", "cam-1", "cam-2"):
            stats.count("received", device=device)
        stats.count("quarantined", device="cam-2")
        stats.error("undecodable_image", device="cam-1")
        registry = CollectorRegistry()
        registry.register(StatsCollector(stats))
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(generate_latest(registry).decode())
            for s in f.samples
        }

    def test_off_by_default(self) -> None:
        """One series per counter: fleets have thousands of cameras."""
        m = self.exposition(per_device=False)
        assert value(m, "defed_frames_received_total") == 3
        assert value(m, "defed_frames_errors_total", reason="undecodable_image") == 1
        assert not any(dict(labels).get("device") for _, labels in m)

    def test_on_splits_the_frame_counters_by_device(self) -> None:
        """With metrics.per_device, the frame counters carry a device label."""
        m = self.exposition(per_device=True)
        assert value(m, "defed_frames_received_total", device="cam-1") == 2
        assert value(m, "defed_frames_received_total", device="cam-2") == 1
        assert value(m, "defed_frames_quarantined_total", device="cam-2") == 1
        assert value(m, "defed_frames_errors_total", device="cam-1", reason="undecodable_image") == 1

    @pytest.mark.parametrize("per_device", [False, True])
    def test_settings_switch(self, per_device: bool) -> None:
        from gateway.settings import GatewaySettings

        assert GatewaySettings(metrics={"per_device": per_device}).metrics.per_device is per_device  # type: ignore[arg-type]
