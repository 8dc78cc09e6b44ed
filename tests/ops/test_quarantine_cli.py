"""`defed quarantine list | show | export | stats | prune` on audit logs written by the real AuditLog.

Every test runs on a SQLite file and, with DEFED_TEST_PG_URL set, on PostgreSQL too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from gateway_helpers import mnist_digits, png
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from gateway.audit import AuditLog, QuarantineRecord
from gateway.audit_access import open_audit_log
from gateway.cli import main

BASE = datetime(2025, 5, 1, 10, 15, tzinfo=UTC)
HOSTILE = ["x'; DROP TABLE quarantine_events; --", "cam%", "cam_1", 'cam"1', "cam\x1b[2Jclear"]


@dataclass(frozen=True)
class Sent:
    """What the tests recorded: the frame ids in audit-id order, and each one's pixels and record."""

    url: str
    records: list[QuarantineRecord]
    pixels: dict[str, np.ndarray]
    ids: dict[str, int]  # frame_id → audit id

    @property
    def db(self) -> str:
        """The --db argument: the SQLite file's path, or the URL."""
        return self.url.removeprefix("sqlite:///") if self.url.startswith("sqlite:///") else self.url


def record(device: str, frame: str, at: datetime, image: bytes, label: int = 7) -> QuarantineRecord:
    return QuarantineRecord(
        device,
        frame,
        f"cameras/{device}/frames",
        at,
        1,
        label,
        0.875,
        [2.5, 0.25],
        [1.0, 1.0],
        [0],
        "mnist",
        "1.0.0",
        image,
    )


def write_log(url: str, store_images: bool = True) -> Sent:
    """Ten events: cam-01 ×4 (one of them recent), cam-02 ×1, and one per hostile device id."""
    digits = mnist_digits(10)
    now = datetime.now(UTC)
    plan = [
        ("cam-01", BASE),
        ("cam-01", BASE + timedelta(minutes=10)),
        ("cam-01", BASE + timedelta(hours=1)),
        ("cam-02", BASE + timedelta(hours=1, minutes=5)),
        ("cam-01", now - timedelta(minutes=30)),
    ]
    plan += [(device, BASE + timedelta(hours=2)) for device in HOSTILE]
    records = [record(device, f"frame-{i}", at, png(digits[i])) for i, (device, at) in enumerate(plan)]
    audit = AuditLog(url, store_images=store_images)
    audit.prepare()
    ids = audit.record(records)
    audit.close()
    return Sent(
        url,
        records,
        {f"frame-{i}": digits[i] for i in range(len(plan))},
        {frame: audit_id for (_device, frame), audit_id in ids.items()},
    )


@pytest.fixture
def sent(audit_url: str) -> Sent:
    return write_log(audit_url)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["quarantine", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, *args: str) -> str:
    """Run a command that must fail: the exit code, and one line on stderr starting with `defed:`."""
    got, out, err = run(capsys, *args)
    assert got == code, (got, out, err)
    assert err.count("\n") == 1 and err.startswith("defed: "), err
    return err


class TestList:
    def test_newest_first_with_every_column(self, sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
        """A table of all events, newest first, with a count on stderr."""
        code, out, err = run(capsys, "list", "--db", sent.db)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].split() == [
            "ID",
            "RECEIVED",
            "(UTC)",
            "DEVICE",
            "FRAME",
            "LABEL",
            "ORIGINAL",
            "CONFIDENCE",
            "FLAGGED",
            "BY",
        ]
        assert len(lines) == 1 + len(sent.records)
        assert lines[1].split()[0] == str(sent.ids["frame-4"])  # the recent one
        assert "10 of 10 events" in err

    def test_json_has_the_summary_fields(self, sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
        """--json gives a list of objects with UTC ISO-8601 times."""
        events = run_json(capsys, "list", "--db", sent.db, "--device", "cam-02")
        assert len(events) == 1
        (event,) = events
        assert event["device_id"] == "cam-02" and event["frame_id"] == "frame-3"
        assert datetime.fromisoformat(event["received_at"]) == BASE + timedelta(hours=1, minutes=5)
        assert (event["label"], event["original_label"], event["flagged_by"]) == (7, 1, [0])

    def test_time_window_and_limit(self, sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
        """--since is inclusive, --until exclusive; --limit keeps the newest; a duration counts back from now."""
        window = run_json(
            capsys, "list", "--db", sent.db, "--since", "2025-05-01T10:15:00Z", "--until", "2025-05-01T13:21:00+02:00"
        )  # 11:21 UTC
        assert [e["frame_id"] for e in window] == ["frame-3", "frame-2", "frame-1", "frame-0"]
        limited = run_json(capsys, "list", "--db", sent.db, "--device", "cam-01", "--limit", "2")
        assert [e["frame_id"] for e in limited] == ["frame-4", "frame-2"]
        recent = run_json(capsys, "list", "--db", sent.db, "--since", "1h")
        assert [e["frame_id"] for e in recent] == ["frame-4"]
        naive = run_json(capsys, "list", "--db", sent.db, "--until", "2025-05-01 10:16")  # no offset: UTC
        assert [e["frame_id"] for e in naive] == ["frame-0"]

    def test_limit_shows_how_many_more(self, sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
        """A cut listing says so; --limit 0 lists everything."""
        _, out, err = run(capsys, "list", "--db", sent.db, "--limit", "3")
        assert len(out.splitlines()) == 4 and "3 of 10 events" in err and "--limit 10" in err
        assert len(run_json(capsys, "list", "--db", sent.db, "--limit", "0")) == 10

    @pytest.mark.parametrize("device", HOSTILE)
    def test_hostile_device_ids_are_bound_not_spliced(
        self, sent: Sent, device: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Quotes, SQL, `%` and `_` in --device match exactly one device, literally; the table survives."""
        events = run_json(capsys, "list", "--db", sent.db, "--device", device)
        assert [e["device_id"] for e in events] == [device]
        engine = open_audit_log(sent.url)
        with engine.connect() as connection:
            assert inspect(connection).has_table("quarantine_events")
        engine.dispose()

    def test_unknown_device_lists_nothing(self, sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
        """`cam` is no prefix pattern: no event, exit 0."""
        assert run_json(capsys, "list", "--db", sent.db, "--device", "cam") == []

    def test_unprintable_device_ids_are_escaped_in_tables(self, sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
        """A device id holding a terminal escape sequence is shown escaped, never sent to the terminal."""
        _, out, _ = run(capsys, "list", "--db", sent.db)
        assert "\x1b" not in out and "cam\\x1b[2Jclear" in out

    def test_settings_locate_the_audit_log(
        self, sent: Sent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --db, audit.url from --config is used."""
        config = tmp_path / "gateway.toml"
        config.write_text(f'[audit]\nurl = "{sent.url}"\n')
        assert len(run_json(capsys, "list", "--config", str(config))) == 10


class TestShow:
    def test_every_stored_field(self, sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
        """show --json gives every column, the image as its size and format."""
        event = run_json(capsys, "show", str(sent.ids["frame-1"]), "--db", sent.db)
        rec = sent.records[1]
        assert event["id"] == sent.ids["frame-1"]
        assert (event["device_id"], event["frame_id"], event["topic"]) == (rec.device_id, rec.frame_id, rec.topic)
        assert datetime.fromisoformat(event["received_at"]) == rec.received_at
        assert datetime.fromisoformat(event["decided_at"]) >= rec.received_at
        assert (event["original_label"], event["label"], event["confidence"]) == (1, 7, 0.875)
        assert (event["scores"], event["thresholds"], event["flagged_by"]) == ([2.5, 0.25], [1.0, 1.0], [0])
        assert (event["bundle_name"], event["bundle_version"]) == ("mnist", "1.0.0")
        assert (event["image_size"], event["image_format"]) == (len(rec.image), "png")
        assert len(event["image_sha256"]) == 64

    def test_table_for_people(self, sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
        """Without --json, one field per line."""
        code, out, _ = run(capsys, "show", str(sent.ids["frame-0"]), "--db", sent.db)
        fields = {line.split(maxsplit=1)[0] for line in out.splitlines()[1:]}
        assert code == 0 and {"device_id", "topic", "scores", "thresholds", "image", "image_sha256"} <= fields

    def test_unknown_id(self, sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
        err = one_line_error(capsys, 2, "show", "999", "--db", sent.db)
        assert "no quarantine event with id 999" in err

    def test_id_must_be_a_number(self, sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
        one_line_error(capsys, 2, "show", "1; DROP TABLE quarantine_events", "--db", sent.db)


class TestExport:
    def test_png_is_the_frame_as_received(self, sent: Sent, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Exported as .png: the stored bytes unchanged, and they decode to the digit sent."""
        out = tmp_path / "frame.png"
        code, stdout, err = run(capsys, "export", str(sent.ids["frame-2"]), "--out", str(out), "--db", sent.db)
        assert code == 0, err
        assert out.read_bytes() == sent.records[2].image and "as received" in stdout
        assert np.array_equal(cv2.imread(str(out), cv2.IMREAD_GRAYSCALE), sent.pixels["frame-2"])

    def test_other_formats_are_converted(self, sent: Sent, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """.bmp keeps every pixel; .jpg is close to the digit sent (JPEG is lossy)."""
        digit = sent.pixels["frame-5"]
        for name in ("frame.bmp", "frame.jpg"):
            code, _, err = run(
                capsys, "export", str(sent.ids["frame-5"]), "--out", str(tmp_path / name), "--db", sent.db
            )
            assert code == 0, err
        assert np.array_equal(cv2.imread(str(tmp_path / "frame.bmp"), cv2.IMREAD_GRAYSCALE), digit)
        jpeg = cv2.imread(str(tmp_path / "frame.jpg"), cv2.IMREAD_GRAYSCALE)
        assert jpeg.shape == digit.shape and np.abs(jpeg.astype(int) - digit).mean() < 4

    def test_unknown_id(self, sent: Sent, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        out = tmp_path / "x.png"
        one_line_error(capsys, 2, "export", "999", "--out", str(out), "--db", sent.db)
        assert not out.exists()

    def test_unknown_extension(self, sent: Sent, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        err = one_line_error(capsys, 2, "export", "1", "--out", str(tmp_path / "x.gif"), "--db", sent.db)
        assert ".png" in err

    def test_unwritable_destination(self, sent: Sent, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        one_line_error(capsys, 2, "export", "1", "--out", str(tmp_path / "no" / "x.png"), "--db", sent.db)

    def test_event_without_image(self, audit_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """With audit.store_images off there is nothing to export: say so, with the digest that was kept."""
        log = write_log(audit_url, store_images=False)
        err = one_line_error(
            capsys, 2, "export", str(log.ids["frame-0"]), "--out", str(tmp_path / "x.png"), "--db", log.db
        )
        assert "no stored image" in err and "SHA-256" in err
        assert run_json(capsys, "show", str(log.ids["frame-0"]), "--db", log.db)["image_size"] is None


class TestStats:
    def test_counts_by_device_and_hour(self, sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
        """Busiest device first; UTC hours oldest first, empty hours left out."""
        stats = run_json(capsys, "stats", "--db", sent.db, "--until", "2025-05-02")
        assert stats["total"] == 9
        cam1 = stats["by_device"][0]
        assert (cam1["device_id"], cam1["events"]) == ("cam-01", 3)
        assert {d["device_id"] for d in stats["by_device"]} == {"cam-01", "cam-02", *HOSTILE}
        assert datetime.fromisoformat(cam1["first"]) == BASE
        assert datetime.fromisoformat(cam1["last"]) == BASE + timedelta(hours=1)
        hours = [(datetime.fromisoformat(h["hour"]), h["events"]) for h in stats["by_hour"]]
        assert hours == [
            (datetime(2025, 5, 1, 10, tzinfo=UTC), 2),
            (datetime(2025, 5, 1, 11, tzinfo=UTC), 2),
            (datetime(2025, 5, 1, 12, tzinfo=UTC), len(HOSTILE)),
        ]

    def test_tables_for_people(self, sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = run(capsys, "stats", "--db", sent.db, "--device", "cam-01")
        assert code == 0
        assert out.startswith("4 events from 1 device, ")
        assert "2025-05-01 10:00" in out and "HOUR (UTC)" in out

    def test_empty_log(self, audit_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        audit = AuditLog(audit_url)
        audit.prepare()
        audit.close()
        db = audit_url.removeprefix("sqlite:///") if audit_url.startswith("sqlite") else audit_url
        assert run_json(capsys, "stats", "--db", db) == {"total": 0, "by_device": [], "by_hour": []}


class TestPrune:
    def test_dry_run_counts_and_deletes_nothing(self, sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = run(capsys, "prune", "--older-than", "1d", "--dry-run", "--db", sent.db)
        assert code == 0 and out.startswith("would delete 9 events received before ")
        assert len(run_json(capsys, "list", "--db", sent.db, "--limit", "0")) == 10

    def test_deletes_older_events(self, sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = run(capsys, "prune", "--older-than", "2025-05-01T11:00:00Z", "--db", sent.db)
        assert code == 0 and out.startswith("deleted 2 events")
        left = {e["frame_id"] for e in run_json(capsys, "list", "--db", sent.db, "--limit", "0")}
        assert left == {f"frame-{i}" for i in range(2, 10)}
        _, out, _ = run(capsys, "prune", "--older-than", "1d", "--db", sent.db)
        assert out.startswith("deleted 7 events")

    def test_more_events_than_one_chunk(self, audit_url: str) -> None:
        """The prune deletes in chunks until none is left."""
        from gateway.audit import prune_events

        audit = AuditLog(audit_url)
        audit.prepare()
        audit.record([record("cam", f"f{i}", BASE, b"img") for i in range(25)])
        assert prune_events(audit.engine, BASE + timedelta(seconds=1), chunk=10) == 25
        assert audit.events() == []
        audit.close()

    def test_needs_an_age(self, sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
        one_line_error(capsys, 2, "prune", "--db", sent.db)
        one_line_error(capsys, 2, "prune", "--older-than", "0d", "--db", sent.db)


class TestBadInput:
    @pytest.mark.parametrize(
        "command",
        [["list"], ["show", "1"], ["stats"], ["prune", "--older-than", "30d"], ["export", "1", "--out", "x.png"]],
    )
    def test_missing_database_is_not_created(
        self, command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A path that does not exist: one line, exit 2, and no empty database left behind."""
        missing = tmp_path / "state" / "audit.sqlite3"
        err = one_line_error(capsys, 2, *command, "--db", str(missing))
        assert "audit log not found" in err
        assert not missing.parent.exists()

    def test_not_a_database(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        junk = tmp_path / "audit.sqlite3"
        junk.write_bytes(b"not a database at all" * 100)
        assert "cannot open the audit log" in one_line_error(capsys, 2, "list", "--db", str(junk))

    def test_database_without_the_table(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        import sqlite3

        other = tmp_path / "other.sqlite3"
        with sqlite3.connect(other) as connection:
            connection.execute("create table t (x)")
        assert "not a defed audit log" in one_line_error(capsys, 2, "list", "--db", str(other))

    @pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
    def test_unreadable_database(self, sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
        if not sent.url.startswith("sqlite"):
            pytest.skip("file permissions are SQLite's")
        Path(sent.db).chmod(0)
        assert "permission denied" in one_line_error(capsys, 2, "list", "--db", sent.db)

    @pytest.mark.skipif(os.geteuid() != 0, reason="only root can read another user's database")
    def test_root_is_sent_to_the_owner(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """As root on the daemon user's SQLite file: refused, since SQLite would leave root-owned -wal/-shm files."""
        log = write_log(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
        os.chown(log.db, 65534, 65534)
        assert "sudo -u" in one_line_error(capsys, 2, "list", "--db", log.db)

    def test_directory_instead_of_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert "is not a file" in one_line_error(capsys, 2, "list", "--db", str(tmp_path))

    @pytest.mark.parametrize("expression", ["2x", "yesterday", "7", "-1h", "2025-13-01", "1h 30m", ""])
    def test_bad_time_expression(self, sent: Sent, expression: str, capsys: pytest.CaptureFixture[str]) -> None:
        err = one_line_error(capsys, 2, "list", "--since", expression, "--db", sent.db)
        assert "--since" in err

    def test_since_after_until(self, sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
        assert "is not before" in one_line_error(capsys, 2, "list", "--since", "1h", "--until", "2h", "--db", sent.db)

    def test_unreachable_server_is_a_runtime_failure(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A PostgreSQL server that does not answer: one line, exit 1."""
        pytest.importorskip("psycopg")
        err = one_line_error(capsys, 1, "list", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none")
        assert "cannot open the audit log" in err

    def test_unsupported_database(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert "not supported" in one_line_error(capsys, 2, "list", "--db", "mysql://u@localhost/db")


class TestReadOnly:
    def test_queries_cannot_write(self, sent: Sent) -> None:
        """The engine the queries use refuses writes (SQLite mode=ro; PostgreSQL read-only transactions)."""
        engine = open_audit_log(sent.url)
        with pytest.raises(DBAPIError), engine.begin() as connection:
            connection.execute(text("DELETE FROM quarantine_events"))
        engine.dispose()
        audit = AuditLog(sent.url)
        assert len(audit.events()) == 10
        audit.close()

    def test_query_runs_while_the_daemon_holds_a_write_transaction(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """WAL: `list` answers at once while a write is in progress, and sees only committed events."""
        url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
        log = write_log(url)
        daemon = AuditLog(url)
        with daemon.engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        with daemon.engine.begin() as writing:
            writing.execute(text("DELETE FROM quarantine_events WHERE frame_id = 'frame-0'"))
            started = datetime.now(UTC)
            events = run_json(capsys, "list", "--db", log.db, "--limit", "0")
            elapsed = datetime.now(UTC) - started
        # The SQLite busy timeout is 5 s: a reader that waited for the lock would take that long.
        assert len(events) == 10 and elapsed < timedelta(seconds=3)
        assert len(daemon.events()) == 9
        daemon.close()

    def test_daemon_writes_while_a_query_is_reading(self, tmp_path: Path) -> None:
        """A reader in the middle of a result (its read transaction open) does not hold up the daemon's commit."""
        url = f"sqlite:///{tmp_path / 'audit.sqlite3'}"
        write_log(url)
        reader = open_audit_log(url)
        daemon = AuditLog(url)
        with reader.connect() as connection:
            rows = connection.execute(text("SELECT id FROM quarantine_events ORDER BY id"))
            assert rows.fetchone() is not None  # the statement is active: SQLite holds its read snapshot
            started = datetime.now(UTC)
            daemon.record([record("cam-09", "late", datetime.now(UTC), b"img")])
            assert datetime.now(UTC) - started < timedelta(seconds=3)
            assert len(rows.fetchall()) == 9  # the rest of the reader's snapshot: not the new row
        assert len(daemon.events()) == 11
        daemon.close()
        reader.dispose()
