"""Fixtures: a private mosquitto per test, untrained bundles whose thresholds force the routing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gateway_helpers import Camera, ResultListener, mnist_digits, write_bundle
from sqlalchemy import create_engine, text

from gateway.broker import PrivateBroker


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


@pytest.fixture(scope="session")
def digits() -> np.ndarray:
    return mnist_digits(120)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, digits: np.ndarray) -> dict[str, Path]:
    """Bundles that flag no frame, every frame, or about half of real MNIST digits."""
    root = tmp_path_factory.mktemp("bundles")
    return {flag: write_bundle(root / flag, flag, digits) for flag in ("none", "all", "some")}


PG_URL = os.environ.get("DEFED_TEST_PG_URL")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(
    not PG_URL, reason="set DEFED_TEST_PG_URL to run the PostgreSQL variant"))])
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
