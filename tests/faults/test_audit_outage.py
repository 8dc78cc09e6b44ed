"""The audit database goes away while frames arrive: SQLite locked by another process's exclusive
transaction, or the PostgreSQL table locked by another session (the shared server is never stopped).

Guarantee: quarantined frames are not answered nor acknowledged while their audit row cannot be
committed; the daemon says so (log, `defed/stats`, metrics, systemd STATUS=), keeps running, and
answers them all, with one audit row each, once the database is back.
"""

from __future__ import annotations

import signal
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faults_helpers import (
    PG_URL,
    Gateway,
    TimedListener,
    audit_counts,
    keys,
    log_events,
    make_frames,
)
from gateway_helpers import Camera, gateway_settings, unacknowledged
from sqlalchemy import create_engine, make_url, text

from gateway.broker import PrivateBroker

Lock = Callable[[], Any]


@contextmanager
def private_pg_database() -> Iterator[str]:
    """A database of our own on the shared PostgreSQL server, dropped afterwards."""
    assert PG_URL is not None
    name = f"defed_faults_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def sqlite_locked(url: str) -> Iterator[None]:
    """Another process's writer holds SQLite's exclusive lock (as a long `defed quarantine` prune might)."""
    connection = sqlite3.connect(make_url(url).database or "", isolation_level=None)
    connection.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        connection.execute("COMMIT")
        connection.close()


@contextmanager
def pg_locked(url: str) -> Iterator[None]:
    """Another session holds ACCESS EXCLUSIVE on the audit table: every write to it waits."""
    engine = create_engine(url)
    connection = engine.connect()
    transaction = connection.begin()
    connection.execute(text("LOCK TABLE quarantine_events IN ACCESS EXCLUSIVE MODE"))
    try:
        yield
    finally:
        transaction.rollback()
        connection.close()
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(
    not PG_URL, reason="set DEFED_TEST_PG_URL to run the PostgreSQL variant"))])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Callable[[str], Any]]]:
    """(audit URL, how to lock it) for each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.sqlite3'}", sqlite_locked
        return
    with private_pg_database() as url:
        yield url, pg_locked


class TestAuditOutage:
    def test_frames_wait_unacknowledged_then_catch_up(
            self, broker: PrivateBroker, bundles: dict[str, Path], digits: np.ndarray, tmp_path: Path,
            database: tuple[str, Callable[[str], Any]], figures: dict[str, Any]) -> None:
        """Locked audit log: flagged frames held and reported, the daemon lives on, all answered after."""
        url, locked = database
        listener = TimedListener(broker.port)
        settings = gateway_settings(tmp_path / "state", broker.port, bundles["all"], stats_interval_s=0.5,
                                    audit={"url": url})
        before, during = make_frames(digits, 5, prefix="pre"), make_frames(digits, 20, prefix="out")
        gateway = Gateway(settings, tmp_path).start()
        camera = Camera(broker.port)
        try:
            for device, payload, frame_id in before:
                camera.send(device, payload, frame_id=frame_id)
            assert listener.wait_for_frames(keys(before), 60), gateway.log()
            with locked(url):
                locked_at = time.monotonic()
                for device, payload, frame_id in during:
                    camera.send(device, payload, frame_id=frame_id)
                # The daemon says so: stats, log line, systemd status; and it keeps running.
                assert listener.wait_for(lambda s: any(p.get("audit_write_failures", 0) >= 2
                                                       and p.get("audit_pending") == len(during)
                                                       for t, p in s.messages if t == "defed/stats"), 120), \
                    gateway.log()
                gateway.wait_for_notify("STATUS=audit log unavailable", 10)
                assert log_events(gateway.log_path, "audit log unavailable; quarantined frames held unacknowledged")
                assert gateway.process is not None and gateway.process.poll() is None
                answered_during = keys(during) & set(listener.result_counts())
                released_at = time.monotonic()
            assert not answered_during, "a quarantined frame was answered without its audit row"
            assert listener.wait_for_frames(keys(during), 120), (listener.missing(keys(during)), gateway.log())
            caught_up = time.monotonic()
            gateway.wait_for_notify("STATUS=audit log available again", 30)
            failures = max(p.get("audit_write_failures", 0) for p in listener.stats())
            gateway.signal(signal.SIGTERM)
            assert gateway.wait(60) == 0
        finally:
            gateway.stop()
        rows = audit_counts(url)
        counts = listener.result_counts()
        sent = keys(before) | keys(during)
        figures |= {"backend": url.split(":")[0], "sent": len(sent), "answered": len(set(counts) & sent),
                    "lost": len(sent - set(counts)), "duplicate_results": sum(n - 1 for n in counts.values()),
                    "outage_s": round(released_at - locked_at, 2), "audit_write_failures": failures,
                    "release_to_all_answered_s": round(caught_up - released_at, 2),
                    "duplicate_audit_rows": sum(n - 1 for n in rows.values())}
        assert set(rows) == sent and all(n == 1 for n in rows.values())
        assert unacknowledged(broker.port, settings["mqtt"]["client_id"]) == 0
        listener.close()
