"""Where the review server listens, and whether that address needs a password.

Loopback (127.0.0.0/8, ::1, `localhost`) is reachable only from the hub itself: an operator gets
there through an SSH tunnel or a reverse proxy that does its own authentication. Anything else
(an interface address, `0.0.0.0`, a host name) is reachable from the network and is refused
without `review.password`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class ListenError(ValueError):
    """An address that is not HOST:PORT."""


@dataclass(frozen=True)
class ListenAddress:
    host: str  # "" or "0.0.0.0" / "::": every interface
    port: int  # 0: any free port, chosen at bind time

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def url(self, port: int | None = None) -> str:
        host = self.host or "0.0.0.0"
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port if port is None else port}/"

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> ListenAddress:
    """`HOST:PORT`, `[IPv6]:PORT`, or `:PORT` (every interface)."""
    spec = text.strip()
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ListenError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8088, [::1]:8088)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ListenError(f"{text!r}: {host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise ListenError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:8088")
    return ListenAddress(host, int(port))


def is_loopback(host: str) -> bool:
    """True only for addresses that cannot be reached from another machine."""
    if host.lower().rstrip(".") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "" (every interface) or a host name: it may resolve to anything


def exposure_problem(address: ListenAddress, has_password: bool) -> str | None:
    """Why the server must not start on `address`, or None."""
    if address.loopback or has_password:
        return None
    return (
        f"refusing to serve the audit log on {address} without a password: set review.password "
        "(DEFED_REVIEW__PASSWORD), or keep the loopback default and put an authenticating reverse proxy "
        "in front (docs/operations.md)"
    )
