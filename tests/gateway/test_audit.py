"""Audit log: migrations at start, idempotent on (device_id, frame_id), SQLite WAL, PostgreSQL alike."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from sqlalchemy import inspect, text

from gateway.audit import AuditLog, QuarantineRecord


def record(device: str = "cam1", frame: str = "f1", image: bytes = b"\x89PNG...",
           received_at: datetime | None = None) -> QuarantineRecord:
    return QuarantineRecord(device, frame, f"cameras/{device}/frames", received_at or datetime.now(UTC), 3, 5, 0.9,
                            [1.5, 0.2], [1.0, 1.0], [0], "mnist", "1.0.0", image)


class TestAuditLog:
    def test_schema_is_migrated_and_upgrade_is_repeatable(self, audit_url: str) -> None:
        """prepare() creates the table through Alembic and can run again on an up-to-date schema."""
        audit = AuditLog(audit_url)
        audit.prepare()
        audit.prepare()
        tables = inspect(audit.engine).get_table_names()
        assert {"quarantine_events", "alembic_version"} <= set(tables)
        with audit.engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"
        audit.close()

    def test_redelivered_frame_keeps_its_row_and_id(self, audit_url: str) -> None:
        """Recording the same (device_id, frame_id) twice leaves one row and returns the same id."""
        audit = AuditLog(audit_url)
        audit.prepare()
        first = audit.record([record()])
        again = audit.record([record(), record("cam2")])
        assert again[("cam1", "f1")] == first[("cam1", "f1")]
        assert len(audit.events()) == 2
        audit.close()

    def test_bytes_and_digest_are_kept(self, audit_url: str) -> None:
        """The frame's bytes as received and their SHA-256 are stored."""
        audit = AuditLog(audit_url)
        audit.prepare()
        audit.record([record(image=b"raw bytes")])
        (event,) = audit.events()
        assert event.image == b"raw bytes" and event.image_sha256 == hashlib.sha256(b"raw bytes").hexdigest()
        assert (event.scores, event.flagged_by, event.bundle_name) == ([1.5, 0.2], [0], "mnist")
        audit.close()

    def test_images_can_be_left_out(self, audit_url: str) -> None:
        """With store_images off only the digest is kept."""
        audit = AuditLog(audit_url, store_images=False)
        audit.prepare()
        audit.record([record(image=b"raw")])
        assert audit.events()[0].image is None
        audit.close()

    def test_retention_purges_old_events(self, audit_url: str) -> None:
        """Events older than retention_days are deleted; 0 keeps everything."""
        audit = AuditLog(audit_url)
        audit.prepare()
        audit.record([record(frame="old", received_at=datetime.now(UTC) - timedelta(days=10)), record(frame="new")])
        assert audit.purge(0) == 0
        assert audit.purge(5) == 1
        assert [e.frame_id for e in audit.events()] == ["new"]
        audit.close()

    def test_sqlite_runs_in_wal_mode(self, tmp_path: object) -> None:
        """The default SQLite file is in WAL mode so readers do not block the daemon."""
        audit = AuditLog(f"sqlite:///{tmp_path}/a.sqlite3")
        audit.prepare()
        with audit.engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        audit.close()
