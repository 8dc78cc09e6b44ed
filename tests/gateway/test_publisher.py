"""Publisher: commit, publish, then acknowledge; every frame's log line names its device and frame."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from gateway.audit import AuditLog
from gateway.decision import EventFormatter
from gateway.frames import Delivery, Frame, Rejection, Verdict
from gateway.publisher import ResultPublisher
from gateway.stats import GatewayStats


class FakeLink:
    """Records publishes; the broker's PUBACK is delivered when the test says so."""

    def __init__(self) -> None:
        self.published: list[str] = []
        self.pending: list[Callable[[], None]] = []

    def publish(self, topic: str, payload: bytes, on_delivered: Callable[[], None], *, retain: bool = False) -> None:
        self.published.append(topic)
        self.pending.append(on_delivered)

    def puback_all(self) -> None:
        for callback in self.pending:
            callback()
        self.pending.clear()


def delivery(device: str, mid: int) -> Delivery:
    return Delivery(f"cameras/{device}/frames", device, b"img", mid, 1, 0.0, 0.0, {})


Setup = tuple[ResultPublisher, FakeLink, AuditLog, list[int]]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    link, acked = FakeLink(), []
    audit = AuditLog(f"sqlite:///{tmp_path}/a.sqlite3")
    audit.prepare()
    publisher = ResultPublisher(link, audit, EventFormatter("b", "1", [str(i) for i in range(10)], [1.0]),  # type: ignore[arg-type]
                                GatewayStats(), "defed", lambda d: acked.append(d.mid), clock=lambda: 1.0)
    return publisher, link, audit, acked


def frame(device: str, mid: int) -> Frame:
    return Frame(delivery(device, mid), f"f{mid}", None, np.zeros((28, 28, 1), np.uint8), b"img")


class TestResultPublisher:
    def test_ack_only_after_puback_and_commit(self, setup: Setup) -> None:
        """A quarantined frame is in the audit log before its event is published, and acked only after PUBACK."""
        publisher, link, audit, acked = setup
        benign, flagged = Verdict(1, 1, False, 0.9, [0.1], []), Verdict(2, 7, True, 0.6, [5.0], [0])
        publisher.publish_batch([frame("cam1", 1), frame("cam2", 2)], [benign, flagged])
        assert link.published == ["defed/cam1/label", "defed/cam2/quarantine"]
        assert [e.frame_id for e in audit.events()] == ["f2"]
        assert acked == []
        link.puback_all()
        assert acked == [1, 2]

    def test_frame_log_lines_name_device_and_frame(self, setup: Setup) -> None:
        """Quarantine and rejection log lines carry device_id and frame_id."""
        publisher, *_ = setup
        with capture_logs() as logs:
            publisher.publish_batch([frame("cam3", 3)], [Verdict(2, 7, True, 0.6, [5.0], [0])])
            publisher.publish_error(Rejection(delivery("cam4", 4), "abc", "undecodable_image", "junk"))
        events = {e["event"]: e for e in logs}
        assert events["frame quarantined"]["device_id"] == "cam3"
        assert events["frame quarantined"]["frame_id"] == "f3"
        assert (events["frame rejected"]["device_id"], events["frame rejected"]["frame_id"]) == ("cam4", "abc")
        assert events["frame rejected"]["error"] == "undecodable_image"
