"""The gateway daemon: startup → main loop → shutdown.

A frame's path, top to bottom:

    BrokerLink._on_message        (paho network thread)   MQTT message → Delivery
    Gateway.take → FrameCodec     (paho network thread)   Delivery → Frame | Rejection
    Batcher.next_batch            (inference lane)        Frames → batch
    InferenceWorker.decide        (inference lane)        batch → Verdicts (bundle.predict once), in batch order
    ResultPublisher               (publisher thread)      audit commit → event → PUBACK → ack
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import structlog
import torch
from prometheus_client import CollectorRegistry, start_http_server

from defed_core import Bundle, BundleError
from defed_core.bundle import Backend, Precision, resolve_bundle_path
from gateway.audit import AuditLog
from gateway.batcher import Batcher
from gateway.codec import FrameCodec
from gateway.decision import EventFormatter, encode
from gateway.errors import RuntimeFailure, UserError
from gateway.frames import Delivery, Frame, Rejection
from gateway.lifecycle import InFlight, ShutdownRequest
from gateway.mqtt import BrokerLink
from gateway.notify import SystemdNotifier
from gateway.publisher import ResultPublisher
from gateway.retention import RetentionSweeper
from gateway.settings import GatewaySettings
from gateway.stats import GatewayStats, StatsCollector
from gateway.worker import InferenceWorker, warm_up

log = structlog.get_logger("gateway.app")


def load_bundle(
    name_or_path: str,
    device: str,
    backend: Backend = "torch",
    precision: Precision = "fp32",
    cache_dir: Path | None = None,
) -> Bundle:
    """`model.bundle` is a directory holding bundle.json, or the name of a shipped bundle."""
    try:
        return Bundle.load(
            resolve_bundle_path(name_or_path), device, backend=backend, precision=precision, cache_dir=cache_dir
        )
    except (BundleError, RuntimeError, ValueError) as exc:
        raise UserError(f"model.bundle: cannot load {name_or_path!r}: {exc}") from None


class Gateway:
    """One gateway process: its stages, wired together, and its life."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.stats = GatewayStats(per_device=settings.metrics.per_device)
        self.inflight = InFlight()
        self.notifier = SystemdNotifier()
        self.prefix = settings.mqtt.output_prefix
        self.failed = False
        self.next_drop_log = 0.0  # drops are logged at most once a second, with how many since
        self.dropped_unlogged = 0

    def run(self, shutdown: ShutdownRequest) -> int:
        self.shutdown_request = shutdown
        self.startup()
        self.main_loop(shutdown)
        return self.shutdown(shutdown)

    # --- startup ------------------------------------------------------------------------

    def startup(self) -> None:
        s = self.settings
        # Model: loaded and warm before we take a single frame.
        self.notifier.status(f"loading the model {s.model.bundle}")
        threads = s.model.threads or torch.get_num_threads()
        self.bundle = load_bundle(s.model.bundle, s.model.device, s.model.backend, s.model.precision,
                                  s.model_cache_dir)
        self.bundle.use_threads(threads)
        warm_up(self.bundle, s.batching.max_batch)
        log.info("model ready", bundle=self.bundle.name, version=self.bundle.version,
                 device=str(self.bundle.device), backend=self.bundle.backend, input_shape=list(self.bundle.input_shape))
        # Audit log: schema brought up to date; old events pruned now and once a day, aside.
        self.audit = AuditLog(s.audit_url, s.audit.store_images)
        try:
            self.audit.prepare()
        except Exception as exc:
            raise RuntimeFailure(f"audit log {self.audit.engine.url!r}: {exc}") from exc
        log.info("audit log ready", url=self.audit.engine.url.render_as_string(hide_password=True))
        self.retention = RetentionSweeper(self.audit, s.audit.retention_days, self.shutdown_request.requested)
        self.retention.start()
        self.start_metrics()
        # The pipeline, from the far end back, so every stage exists before frames reach it.
        self.link = BrokerLink(s.mqtt, s.frame_topic, f"{self.prefix}/status", self.take)
        formatter = EventFormatter(self.bundle.name, self.bundle.version, self.bundle.classes,
                                   self.bundle.thresholds.tolist())
        self.publisher = ResultPublisher(self.link, self.audit, formatter, self.stats, self.prefix,
                                         self.acknowledge, time.monotonic,
                                         on_audit_state=self.notifier.status)
        self.batcher: Batcher[Frame] = Batcher(s.batching.max_batch, s.batching.max_wait_ms, s.batching.queue_capacity)
        self.stats.queue_depth = self.batcher.__len__
        self.stats.mqtt_connected = self.link.connected.is_set
        self.worker = InferenceWorker(self.bundle, self.batcher, self.publisher.batch_decided, self.stats,
                                      on_failure=self.fail)
        self.codec = FrameCodec(self.bundle.input_shape, s.max_payload_bytes)
        self.publisher.start()
        self.worker.start()
        # Broker: subscribe and say `online` on every connect; READY=1 once the broker has
        # granted the subscription (the model is warm by now).
        broker = f"{s.mqtt.host}:{s.mqtt.port}"
        self.link.on_subscribed = lambda: self.notifier.ready(f"serving {s.frame_topic} from {broker}")
        self.link.on_connection_lost = lambda: self.notifier.status(f"broker {broker} lost, reconnecting")
        self.notifier.status(f"connecting to the broker {broker}")
        self.link.start(receive_maximum=s.batching.queue_capacity)

    def start_metrics(self) -> None:
        self.metrics_server = None
        if not self.settings.metrics.listen:
            return
        host, _, port = self.settings.metrics.listen.rpartition(":")
        registry = CollectorRegistry()
        registry.register(StatsCollector(self.stats))
        try:
            self.metrics_server, _ = start_http_server(int(port), host, registry=registry)
        except OSError as exc:
            raise RuntimeFailure(f"metrics.listen {self.settings.metrics.listen}: {exc}") from exc
        log.info("metrics listening", address=self.settings.metrics.listen)

    # --- frames, on the paho network thread ----------------------------------------------

    def take(self, delivery: Delivery) -> None:
        """A frame arrives: decode it and queue it for a batch, or answer it with an error."""
        self.stats.count("received", device=delivery.device_id)
        self.inflight.add()
        result = self.codec.decode(delivery)
        if isinstance(result, Rejection):
            self.publisher.rejected(result)
        elif len(self.inflight) > self.settings.batching.queue_capacity or not self.batcher.put(result):
            # Over our Receive Maximum: mosquitto 2.0 sends past it once acknowledgements flow
            # (docs/reliability.md), so we hold to it ourselves, which bounds our memory.
            self.drop(delivery, result.frame_id)

    def drop(self, delivery: Delivery, frame_id: str) -> None:
        if self.batcher.closed:
            # Shutting down: leave it unacknowledged; the broker redelivers it to our next session.
            self.inflight.done()
            return
        # Overload: acknowledged without a result, so that it does not hold the broker's window.
        self.stats.count("dropped", device=delivery.device_id)
        self.dropped_unlogged += 1
        now = time.monotonic()
        if now >= self.next_drop_log:  # one line a second under overload, not one per frame
            log.warning("frame dropped, queue full", device_id=delivery.device_id, frame_id=frame_id,
                        capacity=self.batcher.capacity, dropped=self.dropped_unlogged)
            self.next_drop_log, self.dropped_unlogged = now + 1.0, 0
        self.acknowledge(delivery)

    def acknowledge(self, delivery: Delivery) -> None:
        self.link.ack(delivery.mid, delivery.qos)
        self.inflight.done()

    def fail(self) -> None:
        """A stage cannot go on: drain what can be drained and exit non-zero."""
        self.failed = True
        self.shutdown_request.request()

    # --- main loop ------------------------------------------------------------------------

    def main_loop(self, shutdown: ShutdownRequest) -> None:
        """Periodic duties until a signal: stats and the systemd watchdog (at half its interval)."""
        now = time.monotonic()
        duties = [(self.settings.stats_interval_s, self.publish_stats)]
        if self.notifier.watchdog_interval_s:
            duties.append((self.notifier.watchdog_interval_s, self.notifier.watchdog))
        due = [now + interval for interval, _ in duties]
        while not shutdown.requested.wait(timeout=max(0.0, min(due) - time.monotonic())):
            now = time.monotonic()
            for i, (interval, duty) in enumerate(duties):
                if due[i] <= now:
                    duty()
                    due[i] = now + interval

    def publish_stats(self) -> None:
        snapshot: dict[str, Any] = self.stats.snapshot()
        snapshot["in_flight"] = len(self.inflight)
        self.link.publish(f"{self.prefix}/stats", encode(snapshot), lambda: None)
        pending = snapshot["audit_pending"]
        held = f", {pending} held until the audit log can be written" if pending else ""
        self.notifier.status(f"{snapshot['received']} frames received, {snapshot['quarantined']} quarantined, "
                             f"{snapshot['errors']} errors, {snapshot['dropped']} dropped{held}")
        log.debug("stats", **snapshot)

    # --- shutdown -------------------------------------------------------------------------

    def shutdown(self, shutdown: ShutdownRequest) -> int:
        deadline = time.monotonic() + self.settings.drain_timeout_s
        log.info("shutting down", signal=shutdown.signal_name, in_flight=len(self.inflight))
        self.notifier.stopping(f"draining {len(self.inflight)} frames in flight")
        # Stop taking frames: from here on the broker keeps new ones for our next session.
        self.link.stop_taking_frames()
        self.batcher.close()
        # Finish the batches in hand: predict, commit, publish, and wait for every frame's ack.
        if not self.inflight.wait_idle(max(0.0, deadline - time.monotonic())):
            log.warning("drain timed out; the broker will redeliver the unacknowledged frames",
                        unacknowledged=len(self.inflight), timeout_s=self.settings.drain_timeout_s)
        self.publisher.finish()
        # Final stats, then `offline` and a clean disconnect (so the Will is not sent).
        self.publish_stats()
        offline = self.link.close(timeout=max(1.0, deadline - time.monotonic()))
        self.retention.join(timeout=max(1.0, deadline - time.monotonic()))
        self.audit.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        log.info("stopped", offline_published=offline, **{k: v for k, v in self.stats.snapshot().items()
                                                         if isinstance(v, int)})
        return 1 if self.failed else 0
