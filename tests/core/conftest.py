"""Fixtures shared by the core tests."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from defed_core.testing import untrained_bundle


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained bundle written to disk (seed 0: `untrained_bundle()` rebuilds the same one)."""
    path = tmp_path_factory.mktemp("bundle") / "b"
    untrained_bundle(path)
    return path


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    """`Bundle.use_threads` sets torch's process-wide thread count: put it back after each test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
