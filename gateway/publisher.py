"""Results out: audit commit for flagged frames, then the event, then the frame's acknowledgement.

Runs on its own thread so that the worker can start the next batch while this one's results go
out and its audit rows are committed. For every frame, in this order:

  1. quarantined frames of the batch are recorded in the audit log (one transaction);
  2. its label / quarantine / error event is published (QoS 1);
  3. when the broker acknowledges that event (PUBACK), the frame itself is acknowledged.

When the audit log cannot be written (database down, locked, read-only), the batch's benign
frames are answered as usual, and its quarantined frames are *held*: neither published nor
acknowledged, retried with a backoff until a commit succeeds, then answered. Holding them here
rather than leaving them for the broker matters: a broker redelivers an unacknowledged message
only at the next session, so frames merely left unacknowledged would wait for a restart.
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
Flagged = tuple[Frame, Verdict]

AUDIT_RETRY_FIRST_S = 0.5  # first retry after a failed audit commit; doubles up to the next
AUDIT_RETRY_MAX_S = 8.0


class ResultPublisher:
    def __init__(self, link: BrokerLink, audit: AuditLog, formatter: EventFormatter, stats: GatewayStats,
                 output_prefix: str, acknowledge: Callable[[Delivery], None], clock: Clock,
                 on_audit_state: Callable[[str], None] = lambda _status: None) -> None:
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
        # Quarantined frames whose audit rows are not committed yet, oldest first.
        self._held: list[Flagged] = []
        self._retry_at = 0.0
        self._retry_in_s = AUDIT_RETRY_FIRST_S
        self._outage_started: float | None = None
        self.on_audit_state = on_audit_state  # a one-line state for systemd's STATUS=
        stats.audit_pending = lambda: len(self._held)
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
        while True:
            try:
                work = self._work.get(timeout=self.until_retry())
            except queue.Empty:
                self.audit_and_publish([])  # time to retry the held frames
                continue
            if work is None:
                break
            try:
                if isinstance(work, Rejection):
                    self.publish_error(work)
                else:
                    self.publish_batch(*work)
            except Exception:
                # Not the audit log (held and retried above) but e.g. paho refusing to queue: the
                # frames stay unacknowledged, the broker redelivers them at our next session.
                log.exception("publishing failed; frames left unacknowledged for redelivery")
        if self._held:
            log.warning("audit log still unavailable; quarantined frames left unacknowledged for redelivery",
                        held=len(self._held))

    def until_retry(self) -> float | None:
        """Seconds to the next retry of the held frames; None (wait for work) when none are held."""
        return max(0.0, self._retry_at - self.clock()) if self._held else None

    def publish_batch(self, frames: list[Frame], decided: list[Verdict]) -> None:
        flagged: list[Flagged] = []
        for frame, verdict in zip(frames, decided, strict=True):
            if verdict.adversarial:
                flagged.append((frame, verdict))
            else:
                self.publish_result(frame, verdict, None)  # needs no audit row
        if not flagged:
            return
        if self._held and self.clock() < self._retry_at:
            self._held.extend(flagged)  # the audit log is down: wait for the next retry, in order
        else:
            self.audit_and_publish(flagged)

    def audit_and_publish(self, flagged: list[Flagged]) -> None:
        """Commit the audit rows of the held frames and of these (one transaction), then answer them
        all; if the commit fails, hold them all for the next retry."""
        pending = self._held + flagged
        try:
            audit_ids = self.audit.record([self.record(f, v) for f, v in pending])
        except Exception as exc:
            self._held = pending
            self.audit_failed(exc)
            return
        self._held = []
        self.audit_recovered(len(pending))
        for frame, verdict in pending:
            self.publish_result(frame, verdict, audit_ids.get((frame.delivery.device_id, frame.frame_id)))

    def audit_failed(self, exc: Exception) -> None:
        self.stats.count("audit_write_failures")
        now = self.clock()
        if self._outage_started is None:
            self._outage_started, self._retry_in_s = now, AUDIT_RETRY_FIRST_S
        else:
            self._retry_in_s = min(2 * self._retry_in_s, AUDIT_RETRY_MAX_S)
        self._retry_at = now + self._retry_in_s
        # The driver's message, not SQLAlchemy's: that one quotes the statement and its parameters.
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        log.warning("audit log unavailable; quarantined frames held unacknowledged", held=len(self._held),
                    error=reason, retry_in_s=self._retry_in_s)
        self.on_audit_state(f"audit log unavailable ({reason}); {len(self._held)} quarantined frames held")

    def audit_recovered(self, released: int) -> None:
        if self._outage_started is None:
            return
        outage_s = round(self.clock() - self._outage_started, 3)
        self._outage_started = None
        log.info("audit log available again", released=released, outage_s=outage_s)
        self.on_audit_state(f"audit log available again after {outage_s} s; {released} held frames answered")

    def publish_result(self, frame: Frame, verdict: Verdict, audit_id: int | None) -> None:
        d = frame.delivery
        latency_ms = (self.clock() - d.received_at) * 1000.0
        event = self.formatter.result(frame, verdict, latency_ms, audit_id)
        kind = "quarantine" if verdict.adversarial else "label"
        self.send(d, kind, event)
        self.stats.count("quarantined" if verdict.adversarial else "labelled", device=d.device_id)
        self.stats.latency(latency_ms)
        if verdict.adversarial:
            log.info("frame quarantined", device_id=d.device_id, frame_id=frame.frame_id, label=verdict.label,
                     original_label=verdict.original_label, flagged_by=verdict.flagged_by, audit_id=audit_id,
                     latency_ms=round(latency_ms, 3))
        else:
            # No bound logger per frame: at the default level this line is filtered out, and a
            # bind would still be built for every benign frame.
            log.debug("frame labelled", device_id=d.device_id, frame_id=frame.frame_id, label=verdict.label,
                      latency_ms=round(latency_ms, 3))

    def publish_error(self, rejection: Rejection) -> None:
        d = rejection.delivery
        latency_ms = (self.clock() - d.received_at) * 1000.0
        self.send(d, "error", self.formatter.error(rejection, latency_ms))
        self.stats.error(rejection.error, device=d.device_id)
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
