"""Fixtures shared by the gateway, operations and fault tests: a private mosquitto per test, a
result listener on it, no camera left reconnecting, and a fresh audit database per test.

Each of those folders' conftest imports the ones it uses.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_helpers import Camera, ResultListener
from sqlalchemy import create_engine, text

from gateway.broker import PrivateBroker

PG_URL = os.environ.get("DEFED_TEST_PG_URL")


@pytest.fixture(autouse=True)
def close_cameras() -> Iterator[None]:
    """No camera of one test keeps reconnecting into the next test's broker."""
    yield
    while Camera.open_cameras:
        Camera.open_cameras.pop().close()


@pytest.fixture
def broker() -> Iterator[PrivateBroker]:
    with PrivateBroker() as b:
        yield b


@pytest.fixture
def listener(broker: PrivateBroker) -> Iterator[ResultListener]:
    listening = ResultListener(broker.port)
    yield listening
    listening.close()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgresql",
            marks=pytest.mark.skipif(not PG_URL, reason="set DEFED_TEST_PG_URL to run the PostgreSQL variant"),
        ),
    ]
)
def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh audit database: a SQLite file, or an emptied PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.sqlite3'}"
        return
    assert PG_URL is not None
    engine = create_engine(PG_URL)

    def empty() -> None:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS quarantine_events"))
            connection.execute(text("DROP TABLE IF EXISTS alembic_version"))

    empty()
    yield PG_URL
    empty()
    engine.dispose()
