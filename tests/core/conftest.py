"""Fixtures shared by the core tests."""

from pathlib import Path

import pytest

from defed_core.testing import untrained_bundle


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained bundle written to disk (seed 0: `untrained_bundle()` rebuilds the same one)."""
    path = tmp_path_factory.mktemp("bundle") / "b"
    untrained_bundle(path)
    return path
