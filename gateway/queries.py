"""Questions asked of the audit log: which events, one event, its frame, counts by device and hour.

Shared by `defed quarantine` and anything else that shows the audit log (a web page, a script):
each function takes an open Connection (see `gateway.audit_access`) and returns plain frozen
dataclasses, so nothing depends on a session staying open. Every value from the caller reaches
the database as a bound parameter. Times go in and come out as aware UTC datetimes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, DateTime, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from gateway.audit import QuarantineEvent as Q


@dataclass(frozen=True)
class EventFilter:
    """Events of one device (exact id) received in [since, until); None leaves a bound open."""

    device_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.device_id is not None:
            found.append(Q.device_id == self.device_id)
        if self.since is not None:
            found.append(Q.received_at >= as_stored(self.since))
        if self.until is not None:
            found.append(Q.received_at < as_stored(self.until))
        return found


@dataclass(frozen=True)
class EventSummary:
    """One line of a listing."""

    id: int
    device_id: str
    frame_id: str
    received_at: datetime
    original_label: int
    label: int
    confidence: float
    flagged_by: list[int]


@dataclass(frozen=True)
class EventDetail(EventSummary):
    """Every stored field; the image itself is read separately (`event_image`), only its size here."""

    topic: str
    decided_at: datetime
    scores: list[float]
    thresholds: list[float]
    bundle_name: str
    bundle_version: str
    image_sha256: str
    image_size: int | None  # None: the image was not stored (audit.store_images off)


@dataclass(frozen=True)
class DeviceCount:
    device_id: str
    events: int
    first: datetime
    last: datetime


@dataclass(frozen=True)
class HourCount:
    hour: datetime  # the start of the UTC hour
    events: int


SUMMARY_COLUMNS = (Q.id, Q.device_id, Q.frame_id, Q.received_at, Q.original_label, Q.label, Q.confidence, Q.flagged_by)
DETAIL_COLUMNS = (
    *SUMMARY_COLUMNS,
    Q.topic,
    Q.decided_at,
    Q.scores,
    Q.thresholds,
    Q.bundle_name,
    Q.bundle_version,
    Q.image_sha256,
    func.length(Q.image).label("image_size"),
)


def list_events(
    connection: Connection, where: EventFilter, limit: int | None = None, offset: int = 0
) -> list[EventSummary]:
    """Matching events, newest first; at most `limit` of them, after skipping the first `offset` (a page)."""
    query = select(*SUMMARY_COLUMNS).where(*where.conditions()).order_by(Q.received_at.desc(), Q.id.desc())
    if limit is not None:
        query = query.limit(limit)
    if offset:
        query = query.offset(offset)
    return [EventSummary(**with_utc_times(row._asdict())) for row in connection.execute(query)]


def count_events(connection: Connection, where: EventFilter) -> int:
    return int(connection.scalar(select(func.count()).select_from(Q).where(*where.conditions())) or 0)


def get_event(connection: Connection, event_id: int) -> EventDetail | None:
    row = connection.execute(select(*DETAIL_COLUMNS).where(Q.id == event_id)).one_or_none()
    return None if row is None else EventDetail(**with_utc_times(row._asdict()))


def event_image(connection: Connection, event_id: int) -> bytes | None:
    """The frame's bytes as received; None for an unknown id or an event stored without its image."""
    image = connection.scalar(select(Q.image).where(Q.id == event_id))
    return None if image is None else bytes(image)


def device_ids(connection: Connection, limit: int = 1000) -> list[str]:
    """The devices that have events, in order; at most `limit` of them (for a picker, not a census)."""
    query = select(Q.device_id).distinct().order_by(Q.device_id).limit(limit)
    return list(connection.scalars(query))


def counts_by_device(connection: Connection, where: EventFilter) -> list[DeviceCount]:
    """Events per device, the busiest first."""
    events = func.count().label("events")
    query = (
        select(Q.device_id, events, func.min(Q.received_at).label("first"), func.max(Q.received_at).label("last"))
        .where(*where.conditions())
        .group_by(Q.device_id)
        .order_by(events.desc(), Q.device_id)
    )
    return [
        DeviceCount(device, n, as_utc(parse_stored(first)), as_utc(parse_stored(last)))
        for device, n, first, last in connection.execute(query)
    ]


def counts_by_hour(connection: Connection, where: EventFilter) -> list[HourCount]:
    """Events per UTC hour, oldest first; hours without events are left out."""
    hour = utc_hour(Q.received_at).label("hour")
    query = select(hour, func.count()).where(*where.conditions()).group_by(hour).order_by(hour)
    return [HourCount(as_utc(parse_stored(h)), n) for h, n in connection.execute(query)]


# --- times -------------------------------------------------------------------------------


class utc_hour(FunctionElement[datetime]):  # noqa: N801  # named like the SQL functions it stands for
    """The start of the UTC hour of a timestamp, in each dialect's own words."""

    type = DateTime()
    name = "utc_hour"
    inherit_cache = True


@compiles(utc_hour, "sqlite")
def utc_hour_sqlite(element: utc_hour, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite stores the UTC time as text; the hour is its first 13 characters, rebuilt by strftime.
    return f"strftime('%Y-%m-%d %H:00:00', {compiler.process(element.clauses, **kw)})"


@compiles(utc_hour, "postgresql")
def utc_hour_postgresql(element: utc_hour, compiler: SQLCompiler, **kw: Any) -> str:
    # AT TIME ZONE makes the result independent of the session's TimeZone setting.
    return f"date_trunc('hour', ({compiler.process(element.clauses, **kw)}) AT TIME ZONE 'UTC')"


def as_stored(moment: datetime) -> datetime:
    """A bound for a comparison: UTC, the zone every stored time is in."""
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite gives naive times back (they were stored in UTC); PostgreSQL gives aware ones."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_stored(value: datetime | str) -> datetime:
    """Aggregates over a SQLite DateTime column come back as the stored text."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def with_utc_times(row: dict[str, Any]) -> dict[str, Any]:
    return {k: as_utc(v) if isinstance(v, datetime) else v for k, v in row.items()}
