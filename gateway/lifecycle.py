"""Process signals and in-flight accounting: what the daemon needs to know when to stop.

The signal handler only sets an event. The first SIGTERM or SIGINT asks for a drain; after it,
SIGINT gets the operating system's default action back, so a second Ctrl-C ends the process at
once (the broker then redelivers whatever was not acknowledged).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import structlog

log = structlog.get_logger("gateway.lifecycle")


class ShutdownRequest:
    """Set by SIGTERM/SIGINT; the main loop waits on it."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.signal_name: str | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.handle)
        signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        self.requested.set()
        # The next Ctrl-C is the operator insisting: let it kill the process.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    def request(self) -> None:
        """Ask for a drain from code (tests, `defed demo`)."""
        self.requested.set()


class InFlight:
    """Frames taken from the broker and not yet acknowledged; `wait_idle` waits for zero."""

    def __init__(self) -> None:
        self._count = 0
        self._changed = threading.Condition()

    def add(self) -> None:
        with self._changed:
            self._count += 1

    def done(self) -> None:
        with self._changed:
            self._count -= 1
            if self._count == 0:
                self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._count == 0, timeout)

    def __len__(self) -> int:
        with self._changed:
            return self._count
