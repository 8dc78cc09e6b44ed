"""`defed quarantine list | show | export | stats | prune`: the audit log from the command line.

The audit log is the one the gateway's settings name (`--config FILE`, `DEFED_…` variables:
`audit.url`, by default `<state_dir>/audit.sqlite3`), or `--db URL|FILE`. It is opened read-only,
except by `prune`; a missing database is an error, never created.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from gateway.audit import prune_events
from gateway.audit_access import audit_url, open_audit_log
from gateway.commands import quarantine_output as output
from gateway.errors import RuntimeFailure, UserError
from gateway.frame_export import export_frame, sniff_format
from gateway.queries import (
    EventDetail,
    EventFilter,
    count_events,
    counts_by_device,
    counts_by_hour,
    event_image,
    get_event,
    list_events,
)
from gateway.settings import load_settings
from gateway.timespec import TimeSpecError, parse_moment


class Moment(click.ParamType[datetime]):
    """ISO-8601 (UTC without an offset) or a duration ago: 30m, 2h, 7d."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_moment(str(value))
        except TimeSpecError as exc:
            self.fail(str(exc), param, ctx)


def audit_options(function: Any) -> Any:
    """Where the audit log is: the gateway's settings, or --db."""
    function = click.option(
        "--db",
        metavar="URL|FILE",
        help="The audit log: a SQLAlchemy URL or a SQLite file [default: audit.url from the "
        "settings, i.e. <state_dir>/audit.sqlite3].",
    )(function)
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        default=None,
        help="The gateway's TOML settings file; DEFED_… variables override it.",
    )(function)


def filter_options(function: Any) -> Any:
    options = [
        click.option("--device", "device_id", metavar="ID", help="Only this device (exact id)."),
        click.option(
            "--since",
            type=Moment(),
            help="Received at or after TIME: ISO-8601 (UTC unless it has an "
            "offset) or a duration ago like 30m, 2h, 7d.",
        ),
        click.option("--until", type=Moment(), help="Received before TIME (same forms as --since)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


json_option = click.option("--json", "as_json", is_flag=True, help="JSON for scripts instead of a table.")


def event_filter(device_id: str | None, since: datetime | None, until: datetime | None) -> EventFilter:
    if since is not None and until is not None and since >= until:
        raise UserError(
            f"--since ({since.isoformat(timespec='seconds')}) is not before "
            f"--until ({until.isoformat(timespec='seconds')})"
        )
    return EventFilter(device_id, since, until)


@contextmanager
def audit_engine(config_path: Path | None, db: str | None, writable: bool = False) -> Iterator[Engine]:
    """The audit log, opened read-only unless `writable`; a failing query becomes one line (exit 1)."""
    url = audit_url(db) if db else load_settings(config_path).audit_url
    engine = open_audit_log(url, writable=writable)
    try:
        yield engine
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise RuntimeFailure(f"audit log query failed: {reason}") from None
    finally:
        engine.dispose()


@contextmanager
def audit_connection(config_path: Path | None, db: str | None) -> Iterator[Connection]:
    with audit_engine(config_path, db) as engine, engine.connect() as connection:
        yield connection


@click.group()
def quarantine() -> None:
    """Query the audit log of quarantined frames."""


@quarantine.command("list")
@filter_options
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="At most this many events, newest first; 0 for all.",
)
@json_option
@audit_options
def list_command(
    device_id: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
    config_path: Path | None,
    db: str | None,
) -> None:
    """Quarantined events, newest first."""
    where = event_filter(device_id, since, until)
    with audit_connection(config_path, db) as connection:
        events = list_events(connection, where, limit or None)
        total = count_events(connection, where) if limit and len(events) == limit else len(events)
    output.show_events(events, total, as_json)


def event_and_image(config_path: Path | None, db: str | None, event_id: int) -> tuple[EventDetail, bytes | None]:
    """One event and its stored frame (None when images were not stored); an unknown id is an error."""
    with audit_connection(config_path, db) as connection:
        event = get_event(connection, event_id)
        image = event_image(connection, event_id) if event is not None else None
    if event is None:
        raise UserError(f"no quarantine event with id {event_id}")
    return event, image


@quarantine.command("show")
@click.argument("event_id", metavar="ID", type=int)
@json_option
@audit_options
def show_command(event_id: int, as_json: bool, config_path: Path | None, db: str | None) -> None:
    """Every stored field of one event."""
    event, image = event_and_image(config_path, db, event_id)
    output.show_event(event, None if image is None else sniff_format(image), as_json)


@quarantine.command("export")
@click.argument("event_id", metavar="ID", type=int)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Image file to write; its extension (.png, .jpg, …) chooses the format.",
)
@audit_options
def export_command(event_id: int, out: Path, config_path: Path | None, db: str | None) -> None:
    """Write one event's frame as an image file."""
    event, image = event_and_image(config_path, db, event_id)
    if image is None:
        raise UserError(
            f"event {event_id} has no stored image (audit.store_images was off); its SHA-256 was {event.image_sha256}"
        )
    copied = export_frame(image, out)
    how = "the frame as received" if copied else f"converted from {sniff_format(image) or 'its stored format'}"
    click.echo(f"wrote {out} ({how}, event {event_id}, device {output.printable(event.device_id)})")


@quarantine.command("stats")
@filter_options
@json_option
@audit_options
def stats_command(
    device_id: str | None,
    since: datetime | None,
    until: datetime | None,
    as_json: bool,
    config_path: Path | None,
    db: str | None,
) -> None:
    """Event counts by device and by hour (UTC)."""
    where = event_filter(device_id, since, until)
    with audit_connection(config_path, db) as connection:
        by_device = counts_by_device(connection, where)
        by_hour = counts_by_hour(connection, where)
    output.show_stats(by_device, by_hour, as_json)


@quarantine.command("prune")
@click.option(
    "--older-than",
    "before",
    type=Moment(),
    required=True,
    help="Delete events received before TIME: a duration ago like 30d, or ISO-8601.",
)
@click.option("--dry-run", is_flag=True, help="Only count the events that would be deleted.")
@audit_options
def prune_command(before: datetime, dry_run: bool, config_path: Path | None, db: str | None) -> None:
    """Delete events received before a time.

    The gateway prunes once a day by audit.retention_days; this command does it by hand.
    """
    # Not one connection: prune_events deletes in short transactions, so that the daemon's own
    # writes never wait long.
    with audit_engine(config_path, db, writable=not dry_run) as engine:
        count = prune_events(engine, before, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {output.counted(count, 'event')} received before {before.isoformat(timespec='seconds')}")
