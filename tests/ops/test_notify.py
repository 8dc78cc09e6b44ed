"""The sd_notify protocol, read from a real datagram socket passed as NOTIFY_SOCKET to `defed serve`."""

from __future__ import annotations

import itertools
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from gateway_helpers import Camera, GatewayProcess, ResultListener, gateway_settings, mnist_digits, png

from gateway.broker import PrivateBroker
from gateway.notify import SystemdNotifier

WATCHDOG_USEC = 400_000  # WatchdogSec=0.4 s: WATCHDOG=1 expected every 0.2 s


@dataclass
class NotifyRecorder:
    """Every datagram the gateway sends to our socket, as (arrival time, its lines)."""

    sock: socket.socket
    messages: list[tuple[float, list[str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._closed = False
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._changed:
                self.messages.append((time.monotonic(), data.decode().split("\n")))
                self._changed.notify_all()

    def wait_for(self, state: str, timeout: float) -> float:
        """The arrival time of the first datagram holding `state`."""
        with self._changed:
            assert self._changed.wait_for(lambda: self.first(state) is not None, timeout), (state, self.messages)
            found = self.first(state)
            assert found is not None
            return found

    def first(self, state: str) -> float | None:
        return next((at for at, lines in self.messages if state in lines), None)

    def lines(self, prefix: str = "") -> list[tuple[float, str]]:
        with self._changed:
            return [(at, line) for at, lines in self.messages for line in lines if line.startswith(prefix)]

    def close(self) -> None:
        self._closed = True
        self.thread.join()


class TestNotifyProtocol:
    def test_ready_watchdog_status_stopping(
        self, broker: PrivateBroker, benign_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """READY=1 after the subscription with the model warm, WATCHDOG=1 at half the interval, STATUS=
        lines throughout, STOPPING=1 on SIGTERM, then exit 0."""
        monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        settings = gateway_settings(tmp_path / "state", broker.port, benign_bundle, stats_interval_s=0.5)
        gateway = GatewayProcess(settings, tmp_path)
        recorder = NotifyRecorder(gateway.notify)
        listener = ResultListener(broker.port)
        try:
            gateway.start(wait_ready=False)
            ready_at = recorder.wait_for("READY=1", timeout=120)
            # Ready means warm and subscribed: both were logged before READY=1 was sent.
            logged = [e["event"] for e in gateway.log_events()]
            assert "model ready" in logged and "broker subscribed" in logged
            assert logged.index("model ready") < logged.index("broker subscribed")
            # …and a frame sent at once is answered.
            camera = Camera(broker.port)
            camera.send("cam-1", png(mnist_digits(1)[0]), frame_id="first")
            assert listener.wait_for_frames({("cam-1", "first")}, timeout=30), listener.missing({("cam-1", "first")})
            camera.close()
            time.sleep(1.5)
            gateway.signal(signal.SIGTERM)
            stopping_at = recorder.wait_for("STOPPING=1", timeout=30)
            assert gateway.wait(30) == 0
        finally:
            listener.close()
            gateway.stop()
            recorder.close()
        # READY=1 exactly once, after the model was loaded.
        statuses = recorder.lines("STATUS=")
        assert [line for _, line in recorder.lines("READY=")] == ["READY=1"]
        assert any("loading the model" in line and at < ready_at for at, line in statuses)
        assert any(line.startswith("STATUS=serving") for at, line in statuses if at == ready_at)
        assert any("frames received" in line for at, line in statuses if ready_at < at < stopping_at)
        # WATCHDOG=1 from the main loop every 0.2 s between READY and STOPPING: about 7 or more in 1.5 s.
        beats = [at for at, _ in recorder.lines("WATCHDOG=1")]
        assert len([at for at in beats if ready_at <= at <= stopping_at]) >= 5, beats
        gaps = [b - a for a, b in itertools.pairwise(beats)]
        assert max(gaps) < WATCHDOG_USEC / 1e6, gaps  # never late enough for systemd to kill us


class TestSystemdNotifier:
    def test_outside_systemd_nothing_is_sent(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without NOTIFY_SOCKET every call is a no-op, and there is no watchdog."""
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        notifier = SystemdNotifier()
        notifier.ready("x")
        notifier.watchdog()
        assert notifier.watchdog_interval_s is None

    def test_watchdog_meant_for_another_process_is_ignored(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """WATCHDOG_PID names the process systemd watches; an inheriting child must not feed it."""
        monkeypatch.setenv("WATCHDOG_USEC", "30000000")
        monkeypatch.setenv("WATCHDOG_PID", "1")
        assert SystemdNotifier().watchdog_interval_s is None
        monkeypatch.delenv("WATCHDOG_PID")
        assert SystemdNotifier().watchdog_interval_s == 15.0

    def test_a_receiver_that_stops_reading_never_blocks_the_sender(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past the socket's queue (max_dgram_qlen, often 10), messages are dropped, not waited on."""
        path = tmp_path / "notify.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            monkeypatch.setenv("NOTIFY_SOCKET", str(path))
            notifier = SystemdNotifier()
            started = time.monotonic()
            for i in range(200):
                notifier.status(f"status {i}")
            assert time.monotonic() - started < 5

    def test_abstract_socket_and_one_line_status(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An '@' address is in the abstract namespace; STATUS= is kept to one line; READY=1 only once."""
        name = f"defed-test-{time.monotonic_ns()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind("\0" + name)
            sock.settimeout(2)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
            notifier = SystemdNotifier()
            notifier.ready("serving\nfine")
            notifier.ready("reconnected")
            assert sock.recv(4096) == b"READY=1\nSTATUS=serving fine"
            assert sock.recv(4096) == b"STATUS=reconnected"
