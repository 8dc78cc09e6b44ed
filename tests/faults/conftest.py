"""Fault-injection fixtures: the gateway tests' helpers, a private mosquitto, a report of figures.

DEFED_FAULTS_FULL=1 runs the long variants (the figures in docs/reliability.md); DEFED_FAULTS_REPORT
names the JSON file the measured figures are written to (default: in pytest's temporary folder).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))

from gateway_fixtures import broker, close_cameras, listener  # noqa: F401  # fixtures, used by name
from gateway_helpers import mnist_digits, write_bundle

FIGURES: list[dict[str, Any]] = []


@pytest.fixture(scope="session")
def digits() -> np.ndarray:
    return mnist_digits(2000)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, digits: np.ndarray) -> dict[str, Path]:
    """Bundles that flag no frame, every frame, or about half of real MNIST digits."""
    root = tmp_path_factory.mktemp("bundles")
    return {flag: write_bundle(root / flag, flag, digits[:120]) for flag in ("none", "all", "some")}


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A test's measured figures: printed, and written to the session's JSON report."""
    measured: dict[str, Any] = {"test": request.node.nodeid}
    yield measured
    if len(measured) > 1:
        FIGURES.append(measured)
        print(f"\nfigures: {json.dumps(measured)}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not FIGURES:
        return
    default = Path(session.config._tmp_path_factory.getbasetemp()) / "faults-report.json"  # type: ignore[attr-defined]
    path = Path(os.environ.get("DEFED_FAULTS_REPORT", default))
    path.write_text(json.dumps(FIGURES, indent=2) + "\n")
    print(f"\nfault-injection figures: {path}")
