"""A private Mosquitto broker on a free local port, for tests, benchmarks and `defed demo`.

    with PrivateBroker() as broker:
        ...  # broker.host, broker.port; broker.stop() / broker.start() to simulate an outage

Sessions and queued messages are persisted in the broker's own directory, so a stop and start
keeps them, like a real broker restart.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto")


class BrokerError(RuntimeError):
    pass


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or next((p for p in MOSQUITTO_PATHS if Path(p).is_file()), None)
    if found is None:
        raise BrokerError("mosquitto not found; install it (apt-get install mosquitto)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateBroker:
    """A mosquitto process listening on 127.0.0.1 only, anonymous access, persistence on."""

    def __init__(self, port: int | None = None, max_queued_messages: int = 100_000, own_session: bool = False) -> None:
        # own_session: run mosquitto in a session of its own, so a terminal's Ctrl-C reaches
        # only our process, which then stops the broker in order (the demo needs this).
        self.own_session = own_session
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="defed-mosquitto-"))
        self.config = self._dir / "mosquitto.conf"
        self.log_path = self._dir / "mosquitto.log"
        self.config.write_text(
            # Run as ourselves: as root, mosquitto would otherwise switch to the `mosquitto`
            # user, which cannot write its persistence file into our private directory.
            f"user {getpass.getuser()}\n"
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self._dir}/\n"
            # Queue generously for a client that is away; the gateway bounds what it takes
            # with its Receive Maximum, so no in-flight cap is needed here.
            f"max_queued_messages {max_queued_messages}\n"
            "max_inflight_messages 0\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen([find_mosquitto(), "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, start_new_session=self.own_session)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # a listening socket has no event to wait on
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise BrokerError(f"mosquitto exited with {self.process.returncode}: {err.strip()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.address} within {timeout} s")

    def stop(self) -> None:
        """Stop the broker cleanly (SIGTERM), which saves sessions and queued messages."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> PrivateBroker:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
