"""Time expressions of the quarantine commands: ISO-8601 or a duration ago."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.timespec import TimeSpecError, parse_duration, parse_moment

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)


class TestParseMoment:
    @pytest.mark.parametrize(
        ("text", "ago"),
        [
            ("30m", timedelta(minutes=30)),
            ("2h", timedelta(hours=2)),
            ("7d", timedelta(days=7)),
            ("1w", timedelta(weeks=1)),
            ("90s", timedelta(seconds=90)),
            ("1h30m", timedelta(minutes=90)),
            ("1.5h", timedelta(minutes=90)),
            (" 2H ", timedelta(hours=2)),
        ],
    )
    def test_durations_count_back_from_now(self, text: str, ago: timedelta) -> None:
        """A duration is that long before now."""
        assert parse_moment(text, NOW) == NOW - ago

    def test_iso_with_offset_is_converted_to_utc(self) -> None:
        """An offset is honoured and the result is in UTC."""
        moment = parse_moment("2025-05-01T14:30:00+02:00", NOW)
        assert moment == datetime(2025, 5, 1, 12, 30, tzinfo=UTC) and moment.tzinfo == UTC

    @pytest.mark.parametrize("text", ["2025-05-01T12:30", "2025-05-01 12:30:00", "2025-05-01T12:30:00Z"])
    def test_iso_without_offset_is_utc(self, text: str) -> None:
        """No offset means UTC, like every time the commands print."""
        assert parse_moment(text, NOW) == datetime(2025, 5, 1, 12, 30, tzinfo=UTC)

    def test_a_date_is_its_midnight(self) -> None:
        assert parse_moment("2025-05-01", NOW) == datetime(2025, 5, 1, tzinfo=UTC)

    @pytest.mark.parametrize(
        "text",
        ["", "2x", "h", "7", "-1h", "1h 30m", "1y", "yesterday", "2025-13-01", "'; DROP TABLE quarantine_events; --"],
    )
    def test_anything_else_is_an_error_that_says_what_works(self, text: str) -> None:
        with pytest.raises(TimeSpecError, match=r"ISO-8601|duration"):
            parse_moment(text, NOW)

    def test_naive_now_is_not_needed(self) -> None:
        """Without `now`, durations count back from the current UTC time."""
        moment = parse_moment("1h")
        assert moment.tzinfo == UTC
        assert abs(datetime.now(UTC) - timedelta(hours=1) - moment) < timedelta(seconds=5)

    def test_other_zones_convert(self) -> None:
        tz = timezone(timedelta(hours=-5))
        assert parse_moment(datetime(2025, 5, 1, 7, tzinfo=tz).isoformat(), NOW) == NOW


class TestParseDuration:
    def test_zero_is_refused(self) -> None:
        with pytest.raises(TimeSpecError, match="longer than zero"):
            parse_duration("0d")

    def test_sum_of_parts(self) -> None:
        assert parse_duration("1d12h") == timedelta(hours=36)
