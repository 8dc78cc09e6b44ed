"""The gateway tests' helpers and fixtures (a real broker, a gateway subprocess, a result listener) reused here."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))

from gateway_fixtures import close_cameras  # noqa: F401  # fixture, used by name
