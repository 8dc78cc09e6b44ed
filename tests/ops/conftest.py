"""The gateway tests' helpers and fixtures (a gateway subprocess, settings, broker, audit databases) reused here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))

from gateway_fixtures import audit_url, broker, listener  # noqa: F401  # fixtures, used by name
from gateway_helpers import write_bundle  # importable only once the path is set


@pytest.fixture(scope="session")
def benign_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained bundle that flags no frame: quick to load, for tests of the daemon's plumbing."""
    return write_bundle(tmp_path_factory.mktemp("bundles") / "none", "none")
