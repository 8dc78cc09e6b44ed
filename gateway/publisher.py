"""Results out: audit commit for flagged frames, then the event, then the frame's acknowledgement.

Runs on its own thread so that the worker can start the next batch while this one's results go
out and its audit rows are committed. For every frame, in this order:

  1. quarantined frames of the batch are recorded in the audit log (one transaction);
  2. its label / quarantine / error event is published (QoS 1);
  3. when the broker acknowledges that event (PUBACK), the frame itself is acknowledged.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from gateway.audit import AuditLog, QuarantineRecord
from gateway.decision import EventFormatter, encode
from gateway.frames import Delivery, Frame, Rejection, Verdict
from gateway.mqtt import BrokerLink
from gateway.stats import GatewayStats

log = structlog.get_logger("gateway.publisher")

Clock = Callable[[], float]
Work = tuple[list[Frame], list[Verdict]] | Rejection | None


class ResultPublisher:
    def __init__(self, link: BrokerLink, audit: AuditLog, formatter: EventFormatter, stats: GatewayStats,
                 output_prefix: str, acknowledge: Callable[[Delivery], None], clock: Clock) -> None:
        self.link = link
        self.audit = audit
        self.formatter = formatter
        self.stats = stats
        self.prefix = output_prefix
        self.acknowledge = acknowledge
        self.clock = clock
        # Unbounded on purpose: everything in it is a frame the broker will not resend until we
        # acknowledge it, and the broker sends at most Receive Maximum of those at a time.
        self._work: queue.SimpleQueue[Work] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self.run, name="defed-publisher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    # Called from other threads.
    def batch_decided(self, frames: list[Frame], decided: list[Verdict]) -> None:
        self._work.put((frames, decided))

    def rejected(self, rejection: Rejection) -> None:
        self._work.put(rejection)

    def finish(self) -> None:
        """No more work will come: the thread exits once the queue is empty."""
        self._work.put(None)

    def run(self) -> None:
        while (work := self._work.get()) is not None:
            try:
                if isinstance(work, Rejection):
                    self.publish_error(work)
                else:
                    self.publish_batch(*work)
            except Exception:
                # E.g. the database is down: the frames stay unacknowledged, so the broker
                # redelivers them after a restart; nothing is lost, and we keep serving.
                log.exception("publishing failed; frames left unacknowledged for redelivery")

    def publish_batch(self, frames: list[Frame], decided: list[Verdict]) -> None:
        audit_ids = self.audit.record([self.record(f, v) for f, v in zip(frames, decided, strict=True)
                                       if v.adversarial])
        for frame, verdict in zip(frames, decided, strict=True):
            d = frame.delivery
            audit_id = audit_ids.get((d.device_id, frame.frame_id))
            latency_ms = (self.clock() - d.received_at) * 1000.0
            event = self.formatter.result(frame, verdict, latency_ms, audit_id)
            kind = "quarantine" if verdict.adversarial else "label"
            self.send(d, kind, event)
            self.stats.count("quarantined" if verdict.adversarial else "labelled")
            self.stats.latency(latency_ms)
            frame_log = log.bind(device_id=d.device_id, frame_id=frame.frame_id)
            if verdict.adversarial:
                frame_log.info("frame quarantined", label=verdict.label, original_label=verdict.original_label,
                               flagged_by=verdict.flagged_by, audit_id=audit_id, latency_ms=round(latency_ms, 3))
            else:
                frame_log.debug("frame labelled", label=verdict.label, latency_ms=round(latency_ms, 3))

    def publish_error(self, rejection: Rejection) -> None:
        d = rejection.delivery
        latency_ms = (self.clock() - d.received_at) * 1000.0
        self.send(d, "error", self.formatter.error(rejection, latency_ms))
        self.stats.count("errors")
        log.warning("frame rejected", device_id=d.device_id, frame_id=rejection.frame_id,
                    error=rejection.error, detail=rejection.detail, bytes=len(d.payload))

    def send(self, delivery: Delivery, kind: str, event: dict[str, Any]) -> None:
        topic = f"{self.prefix}/{delivery.device_id}/{kind}"
        self.link.publish(topic, encode(event), lambda: self.acknowledge(delivery))

    def record(self, frame: Frame, verdict: Verdict) -> QuarantineRecord:
        d = frame.delivery
        return QuarantineRecord(
            device_id=d.device_id, frame_id=frame.frame_id, topic=d.topic,
            received_at=datetime.fromtimestamp(d.received_wall, UTC),
            original_label=verdict.original_label, label=verdict.label, confidence=verdict.confidence,
            scores=verdict.scores, thresholds=self.formatter.thresholds, flagged_by=verdict.flagged_by,
            bundle_name=self.formatter.bundle["name"], bundle_version=self.formatter.bundle["version"],
            image=frame.image,
        )
