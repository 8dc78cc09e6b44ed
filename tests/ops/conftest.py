"""The gateway tests' helpers (a gateway subprocess, settings) are reused here; audit databases."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))

from gateway_helpers import write_bundle  # importable only once the path is set

from gateway.broker import PrivateBroker

PG_URL = os.environ.get("DEFED_TEST_PG_URL")


@pytest.fixture
def broker() -> Iterator[PrivateBroker]:
    with PrivateBroker() as b:
        yield b


@pytest.fixture(scope="session")
def benign_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained bundle that flags no frame: quick to load, for tests of the daemon's plumbing."""
    return write_bundle(tmp_path_factory.mktemp("bundles") / "none", "none")


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
