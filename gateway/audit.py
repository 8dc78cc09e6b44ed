"""The audit log of quarantined frames (DESIGN §6): one table, any SQLAlchemy database.

Recording is idempotent on (device_id, frame_id): a frame the broker redelivers after a crash
keeps the row, and the audit id, it got the first time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import ConnectionPoolEntry

MIGRATIONS = Path(__file__).parent / "migrations"
WRITE_TIMEOUT_MS = 5000  # a write waits this long for a lock before it fails
PRUNE_CHUNK = 1000  # rows deleted per transaction


class Base(DeclarativeBase):
    pass


class QuarantineEvent(Base):
    """A frame the ensemble flagged, as received, with the decision taken on it."""

    __tablename__ = "quarantine_events"
    __table_args__ = (UniqueConstraint("device_id", "frame_id", name="uq_quarantine_device_frame"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(255), index=True)
    frame_id: Mapped[str] = mapped_column(String(128))
    topic: Mapped[str] = mapped_column(String(1024))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    original_label: Mapped[int] = mapped_column(Integer)
    label: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float] = mapped_column(Float)
    scores: Mapped[list[float]] = mapped_column(JSON)
    thresholds: Mapped[list[float]] = mapped_column(JSON)
    flagged_by: Mapped[list[int]] = mapped_column(JSON)
    bundle_name: Mapped[str] = mapped_column(String(255))
    bundle_version: Mapped[str] = mapped_column(String(64))
    image: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    image_sha256: Mapped[str] = mapped_column(String(64))


@dataclass(frozen=True)
class QuarantineRecord:
    """What the publisher hands over for one flagged frame."""

    device_id: str
    frame_id: str
    topic: str
    received_at: datetime
    original_label: int
    label: int
    confidence: float
    scores: list[float]
    thresholds: list[float]
    flagged_by: list[int]
    bundle_name: str
    bundle_version: str
    image: bytes


def set_sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: `defed quarantine list` can read while the daemon writes. FULL: a commit is on disk
    # before the frame is acknowledged to the broker, even across a power cut.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={WRITE_TIMEOUT_MS}")
    cursor.close()


def open_engine(url: str) -> Engine:
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        event.listen(engine, "connect", set_sqlite_pragmas)
    return engine


def upgrade_schema(engine: Engine) -> None:
    """Bring the schema to the newest migration shipped in this package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class AuditLog:
    """Writes quarantine events; reads them back for the command line."""

    def __init__(self, url: str, store_images: bool = True) -> None:
        self.engine = open_engine(url)
        self.store_images = store_images

    def prepare(self) -> None:
        upgrade_schema(self.engine)

    def record(self, records: list[QuarantineRecord]) -> dict[tuple[str, str], int]:
        """Insert the events not already there, in one transaction; every event's audit id."""
        if not records:
            return {}
        decided_at = datetime.now(UTC)
        rows = [self.row(r, decided_at) for r in records]
        keys = [(r.device_id, r.frame_id) for r in records]
        with Session(self.engine) as session, session.begin():
            if self.engine.dialect.name == "postgresql":
                # A locked table or a stuck server fails the write after this long (SQLite's
                # busy_timeout does the same), so the publisher can say so and retry.
                session.execute(text(f"SET LOCAL statement_timeout = {WRITE_TIMEOUT_MS}"))
            session.execute(self.insert_ignoring_duplicates(), rows)
            found = session.execute(
                select(QuarantineEvent.device_id, QuarantineEvent.frame_id, QuarantineEvent.id)
                .where(tuple_(QuarantineEvent.device_id, QuarantineEvent.frame_id).in_(keys))
            )
            return {(device, frame): audit_id for device, frame, audit_id in found}

    def insert_ignoring_duplicates(self) -> Any:
        if self.engine.dialect.name == "postgresql":
            return postgresql.insert(QuarantineEvent).on_conflict_do_nothing(index_elements=["device_id", "frame_id"])
        if self.engine.dialect.name == "sqlite":
            return sqlite.insert(QuarantineEvent).on_conflict_do_nothing(index_elements=["device_id", "frame_id"])
        raise NotImplementedError(f"audit log on {self.engine.dialect.name} needs an idempotent insert")

    def row(self, r: QuarantineRecord, decided_at: datetime) -> dict[str, Any]:
        return {
            "device_id": r.device_id, "frame_id": r.frame_id, "topic": r.topic,
            "received_at": r.received_at, "decided_at": decided_at,
            "original_label": r.original_label, "label": r.label, "confidence": r.confidence,
            "scores": r.scores, "thresholds": r.thresholds, "flagged_by": r.flagged_by,
            "bundle_name": r.bundle_name, "bundle_version": r.bundle_version,
            "image": r.image if self.store_images else None,
            "image_sha256": hashlib.sha256(r.image).hexdigest(),
        }

    def purge(self, retention_days: float, keep_going: Callable[[], bool] = lambda: True) -> int:
        """Delete events received more than `retention_days` ago; 0 days keeps everything."""
        if retention_days <= 0:
            return 0
        return prune_events(self.engine, datetime.now(UTC) - timedelta(days=retention_days), keep_going=keep_going)

    def events(self) -> list[QuarantineEvent]:
        with Session(self.engine) as session:
            return list(session.scalars(select(QuarantineEvent).order_by(QuarantineEvent.id)))

    def close(self) -> None:
        self.engine.dispose()


def prune_events(engine: Engine, before: datetime, *, dry_run: bool = False, chunk: int = PRUNE_CHUNK,
                 keep_going: Callable[[], bool] = lambda: True) -> int:
    """Delete (or with dry_run, count) the events received before `before`; how many.

    Deleted `chunk` rows per transaction, so the daemon's own writes (on SQLite, one writer at a
    time) wait for one short transaction, never for the whole prune. `keep_going` is asked
    between chunks: a daemon shutting down stops early and prunes the rest next time.
    """
    old = QuarantineEvent.received_at < before.astimezone(UTC)
    if dry_run:
        with engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(QuarantineEvent).where(old)) or 0)
    total = 0
    while keep_going():
        oldest = select(QuarantineEvent.id).where(old).order_by(QuarantineEvent.id).limit(chunk)
        with engine.begin() as connection:
            deleted = connection.execute(delete(QuarantineEvent).where(QuarantineEvent.id.in_(oldest))).rowcount
        total += deleted
        if deleted < chunk:
            break
    return total
