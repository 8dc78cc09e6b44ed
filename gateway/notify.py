"""systemd's notify protocol (Type=notify): READY=1, WATCHDOG=1, STOPPING=1 on $NOTIFY_SOCKET.

A datagram to a Unix socket is the whole protocol, so no dependency is needed. Outside systemd
(no NOTIFY_SOCKET) every call does nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket


class SystemdNotifier:
    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        # An address starting with '@' is in the abstract namespace.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s = int(watchdog_usec) / 1e6 / 2 if watchdog_usec.isdigit() else None

    def send(self, state: str) -> None:
        if not self.address:
            return
        # OSError: systemd gone (e.g. during shutdown); nothing useful to do about it.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
            sock.sendto(state.encode(), self.address)

    def ready(self) -> None:
        self.send("READY=1")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
