"""Moments in time as operators type them: ISO-8601, or a duration ago (`30m`, `2h`, `7d`, `1h30m`).

Every moment comes back as an aware UTC datetime. An ISO-8601 time without an offset is taken as
UTC, like every time the quarantine commands print.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
HINT = "use ISO-8601 (2025-05-01T10:00, UTC unless it has an offset) or a duration ago (30m, 2h, 7d, 1h30m)"


class TimeSpecError(ValueError):
    """Text that is neither an ISO-8601 time nor a duration; the message says what is accepted."""


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `2h`, `7d`, `1w`, or a sum of them (`1h30m`); longer than zero."""
    spec = text.strip().lower()
    if not DURATION.fullmatch(spec):
        raise TimeSpecError(f"{text!r} is not a duration: use a number and a unit s, m, h, d or w (30m, 2h, 7d)")
    seconds = sum(float(number) * UNITS[unit] for number, unit in PART.findall(spec))
    if seconds <= 0:
        raise TimeSpecError(f"{text!r} is not a duration longer than zero")
    return timedelta(seconds=seconds)


def parse_moment(text: str, now: datetime | None = None) -> datetime:
    """An ISO-8601 time, or `now` minus a duration; an aware UTC datetime."""
    spec = text.strip()
    if DURATION.fullmatch(spec.lower()):
        return (now or datetime.now(UTC)) - parse_duration(spec)
    try:
        moment = datetime.fromisoformat(spec)
    except ValueError:
        raise TimeSpecError(f"{text!r} is not a time: {HINT}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
