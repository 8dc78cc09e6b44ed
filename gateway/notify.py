"""systemd's notify protocol (Type=notify): READY=1, WATCHDOG=1, STATUS=…, STOPPING=1 on $NOTIFY_SOCKET.

A datagram to a Unix socket is the whole protocol, so no dependency is needed. Outside systemd
(no NOTIFY_SOCKET) every call does nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading


class SystemdNotifier:
    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        # An address starting with '@' is in the abstract namespace.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval_s = watchdog_interval()
        self._ready = threading.Event()

    def send(self, *states: str) -> None:
        """One datagram; several states in it are separated by newlines, as sd_notify(3) does."""
        if not self.address:
            return
        # Never blocking: the main loop sends from here, and a receiver that stopped reading
        # (its queue holds only max_dgram_qlen datagrams) must not stall it, and with it the
        # handling of SIGTERM. OSError: systemd gone, or that full queue; nothing useful to do.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.sendto("\n".join(states).encode(), self.address)

    def ready(self, status: str) -> None:
        """READY=1 the first time; after that (a reconnect) only the status changes."""
        if self._ready.is_set():
            self.status(status)
            return
        self._ready.set()
        self.send("READY=1", status_line(status))

    def status(self, status: str) -> None:
        self.send(status_line(status))

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", status_line(status))


def status_line(status: str) -> str:
    # One line: a newline would end the assignment, and systemctl status shows a single line.
    return f"STATUS={' '.join(status.split())}"


def watchdog_interval() -> float | None:
    """Half of WatchdogSec= (systemd's advice), or None when no watchdog is asked of this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    # WATCHDOG_PID names the process the watchdog is meant for (as sd_watchdog_enabled(3) checks):
    # a child that inherited the variables must not feed it.
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2
