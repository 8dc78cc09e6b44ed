"""Audit retention: the daemon prunes events older than audit.retention_days at start and then daily."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from gateway_helpers import gateway_settings, running_gateway

from gateway.audit import AuditLog, QuarantineRecord, prune_events
from gateway.broker import PrivateBroker
from gateway.retention import RetentionSweeper


def record(frame: str, age: timedelta) -> QuarantineRecord:
    return QuarantineRecord(
        "cam-1",
        frame,
        "cameras/cam-1/frames",
        datetime.now(UTC) - age,
        1,
        7,
        0.9,
        [2.0],
        [1.0],
        [0],
        "mnist",
        "1.0.0",
        b"img",
    )


def frames(audit: AuditLog) -> set[str]:
    return {e.frame_id for e in audit.events()}


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `check()`: the sweeper runs in its own thread and gives us nothing to wait on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


class FailingAudit(AuditLog):
    """An audit log whose database is down."""

    def purge(self, retention_days: float, keep_going: Callable[[], bool] = lambda: True) -> int:
        raise OSError("database is down")


class TestRetentionSweeper:
    def test_prunes_at_start_and_again_every_interval(self, tmp_path: Path) -> None:
        """With a 0.3 s interval: the old event goes at once, one added later goes at the next sweep."""
        audit = AuditLog(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
        audit.prepare()
        audit.record([record("old", timedelta(days=3)), record("new", timedelta(minutes=5))])
        stop = threading.Event()
        sweeper = RetentionSweeper(audit, retention_days=1, stop=stop, interval_s=0.3)
        with structlog.testing.capture_logs() as logs:
            sweeper.start()
            assert wait_until(lambda: frames(audit) == {"new"})
            audit.record([record("later", timedelta(days=2))])
            assert wait_until(lambda: frames(audit) == {"new"})
            stop.set()
            sweeper.join(timeout=5)
        assert not sweeper.thread.is_alive()
        pruned = [e for e in logs if e["event"] == "audit events pruned"]
        assert len(pruned) >= 2 and pruned[0]["count"] == 1 and any(e["count"] == 1 for e in pruned[1:])
        audit.close()

    def test_off_when_retention_is_zero(self, tmp_path: Path) -> None:
        """retention_days = 0 keeps everything: no thread, one log line saying so."""
        audit = AuditLog(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
        with structlog.testing.capture_logs() as logs:
            RetentionSweeper(audit, retention_days=0, stop=threading.Event()).start()
        assert [e["event"] for e in logs] == ["audit retention off: events are kept until pruned by hand"]
        audit.close()

    def test_a_failed_prune_is_logged_and_retried(self, tmp_path: Path) -> None:
        """A database error neither kills the thread nor the gateway: logged, tried again."""
        audit = FailingAudit(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
        stop = threading.Event()
        sweeper = RetentionSweeper(audit, retention_days=1, stop=stop, interval_s=0.1)
        with structlog.testing.capture_logs() as logs:
            sweeper.start()
            assert wait_until(lambda: sum(e["event"] == "audit retention failed; will retry" for e in logs) >= 2)
            stop.set()
            sweeper.join(timeout=5)
        assert not sweeper.thread.is_alive()

    def test_stops_between_chunks_when_asked(self, tmp_path: Path) -> None:
        """A gateway shutting down stops the prune after the chunk in hand."""
        audit = AuditLog(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
        audit.prepare()
        audit.record([record(f"f{i}", timedelta(days=3)) for i in range(30)])
        answers = iter([True, False])
        deleted = prune_events(audit.engine, datetime.now(UTC), chunk=10, keep_going=lambda: next(answers))
        assert deleted == 10 and len(audit.events()) == 20
        audit.close()


class TestDaemonRetention:
    def test_gateway_prunes_at_start_and_logs_the_count(
        self, broker: PrivateBroker, benign_bundle: Path, tmp_path: Path
    ) -> None:
        """An audit log with an event older than retention_days: gone after start-up, with a log line."""
        state = tmp_path / "state"
        audit = AuditLog(f"sqlite:///{state / 'audit.sqlite3'}")
        audit.prepare()
        audit.record([record("old", timedelta(days=3)), record("new", timedelta(hours=1))])
        settings = gateway_settings(state, broker.port, benign_bundle, audit={"retention_days": 1})
        with running_gateway(settings, tmp_path) as gateway:
            gateway.wait_for_log("audit events pruned", timeout=30)
            (pruned,) = [e for e in gateway.log_events() if e.get("event") == "audit events pruned"]
        assert (pruned["count"], pruned["retention_days"]) == (1, 1)
        assert frames(audit) == {"new"}
        audit.close()
