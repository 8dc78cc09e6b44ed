"""Fixtures: a private mosquitto per test, untrained bundles whose thresholds force the routing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gateway_fixtures import audit_url, broker, close_cameras, listener  # noqa: F401  # fixtures, used by name
from gateway_helpers import mnist_digits, write_bundle


@pytest.fixture(scope="session")
def digits() -> np.ndarray:
    return mnist_digits(120)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, digits: np.ndarray) -> dict[str, Path]:
    """Bundles that flag no frame, every frame, or about half of real MNIST digits."""
    root = tmp_path_factory.mktemp("bundles")
    return {flag: write_bundle(root / flag, flag, digits) for flag in ("none", "all", "some")}
