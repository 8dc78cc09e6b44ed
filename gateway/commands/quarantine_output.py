"""How `defed quarantine` shows events: aligned tables for people, JSON for scripts.

Device and frame ids come from the cameras' topics and payloads, so they are untrusted: in a
table, anything unprintable (a terminal escape sequence, say) is shown escaped, and every cell is
plain text, never rich markup. JSON escapes control characters by itself.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gateway.queries import DeviceCount, EventDetail, EventSummary, HourCount

WIDE = 10_000  # when stdout is not a terminal, never wrap or cut a row


def printable(value: object) -> str:
    """`value` as text with every unprintable character escaped (`\\x1b`, `\\u202e`)."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def when(moment: datetime) -> str:
    """A UTC time for a table: to the second; JSON keeps the full ISO-8601 time."""
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, default=json_default, indent=2))


def json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def emit_table(headers: Sequence[str], rows: Iterable[Sequence[object]], right: Sequence[str] = ()) -> None:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, justify="right" if header in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(printable(cell)) for cell in row))
    terminal = sys.stdout.isatty()
    console = Console(highlight=False, width=None if terminal else WIDE, force_terminal=terminal)
    with console.capture() as captured:
        console.print(table)
    # Rich pads the last column; trailing blanks only get in the way of grep and diff.
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def counted(n: int, noun: str) -> str:
    """`1 event`, `2 events`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def flagged(members: list[int]) -> str:
    return ",".join(str(m) for m in members)


def show_events(events: list[EventSummary], total: int, as_json: bool) -> None:
    if as_json:
        emit_json([asdict(e) for e in events])
        return
    if events:
        emit_table(
            ["ID", "RECEIVED (UTC)", "DEVICE", "FRAME", "LABEL", "ORIGINAL", "CONFIDENCE", "FLAGGED BY"],
            (
                [
                    e.id,
                    when(e.received_at),
                    e.device_id,
                    e.frame_id,
                    e.label,
                    e.original_label,
                    f"{e.confidence:.3f}",
                    flagged(e.flagged_by),
                ]
                for e in events
            ),
            right=("ID", "LABEL", "ORIGINAL", "CONFIDENCE"),
        )
    more = f"; --limit {total} to see them all" if total > len(events) else ""
    click.echo(f"{len(events)} of {counted(total, 'event')}, newest first{more}", err=True)


def show_event(event: EventDetail, image_format: str | None, as_json: bool) -> None:
    """Every stored field; the image as its size and format (`export` writes the image itself)."""
    if as_json:
        emit_json({**asdict(event), "image_format": image_format})
        return
    image = (
        "not stored (audit.store_images was off)"
        if event.image_size is None
        else f"{event.image_size} bytes, {image_format or 'unknown format'}"
        f" (defed quarantine export {event.id} --out FILE)"
    )
    fields: list[tuple[str, object]] = [
        ("id", event.id),
        ("device_id", event.device_id),
        ("frame_id", event.frame_id),
        ("topic", event.topic),
        ("received_at", event.received_at.isoformat()),
        ("decided_at", event.decided_at.isoformat()),
        ("original_label", event.original_label),
        ("label", event.label),
        ("confidence", f"{event.confidence:.6f}"),
        ("scores", ", ".join(f"{s:.6g}" for s in event.scores)),
        ("thresholds", ", ".join(f"{t:.6g}" for t in event.thresholds)),
        ("flagged_by", flagged(event.flagged_by)),
        ("bundle", f"{event.bundle_name} {event.bundle_version}"),
        ("image", image),
        ("image_sha256", event.image_sha256),
    ]
    emit_table(["FIELD", "VALUE"], fields)


def show_stats(by_device: list[DeviceCount], by_hour: list[HourCount], as_json: bool) -> None:
    total = sum(d.events for d in by_device)
    if as_json:
        emit_json(
            {"total": total, "by_device": [asdict(d) for d in by_device], "by_hour": [asdict(h) for h in by_hour]}
        )
        return
    if not total:
        click.echo("no quarantined events", err=True)
        return
    first, last = min(d.first for d in by_device), max(d.last for d in by_device)
    click.echo(
        f"{counted(total, 'event')} from {counted(len(by_device), 'device')}, {when(first)} to {when(last)} UTC\n"
    )
    emit_table(
        ["DEVICE", "EVENTS", "FIRST (UTC)", "LAST (UTC)"],
        ([d.device_id, d.events, when(d.first), when(d.last)] for d in by_device),
        right=("EVENTS",),
    )
    click.echo()
    emit_table(
        ["HOUR (UTC)", "EVENTS"], ([h.hour.strftime("%Y-%m-%d %H:00"), h.events] for h in by_hour), right=("EVENTS",)
    )
