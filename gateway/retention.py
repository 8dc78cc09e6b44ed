"""Audit retention: events older than `audit.retention_days` are deleted at start, then once a day.

On a thread of its own, so that a large prune delays neither start-up nor the main loop (and its
systemd watchdog). The prune runs in short transactions and stops between two of them when the
gateway shuts down.
"""

from __future__ import annotations

import threading

import structlog

from gateway.audit import AuditLog

log = structlog.get_logger("gateway.retention")

DAY_S = 86400.0
RETRY_S = 3600.0  # after a failed prune (database down), try again sooner than the next day


class RetentionSweeper:
    def __init__(
        self, audit: AuditLog, retention_days: float, stop: threading.Event, interval_s: float = DAY_S
    ) -> None:
        self.audit = audit
        self.retention_days = retention_days
        self.stop = stop
        self.interval_s = interval_s
        self.thread = threading.Thread(target=self.run, name="defed-retention", daemon=True)

    def start(self) -> None:
        if self.retention_days <= 0:
            log.info("audit retention off: events are kept until pruned by hand")
            return
        self.thread.start()

    def run(self) -> None:
        while True:
            succeeded = self.sweep()
            wait = self.interval_s if succeeded else min(self.interval_s, RETRY_S)
            if self.stop.wait(wait):
                return

    def sweep(self) -> bool:
        """One prune; False if it failed (logged)."""
        try:
            count = self.audit.purge(self.retention_days, keep_going=lambda: not self.stop.is_set())
        except Exception:
            log.exception("audit retention failed; will retry", retention_days=self.retention_days)
            return False
        log.info("audit events pruned", count=count, retention_days=self.retention_days)
        return True

    def join(self, timeout: float) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)
