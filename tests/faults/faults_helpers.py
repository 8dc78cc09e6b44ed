"""Helpers of the fault-injection suite: gateways that can be killed and watched, paced camera
streams, a timed result listener, audit-log checks, process memory."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from gateway_helpers import Camera, GatewayProcess, ResultListener, attacked, png
from sqlalchemy import create_engine, text

FULL = os.environ.get("DEFED_FAULTS_FULL") == "1"
PG_URL = os.environ.get("DEFED_TEST_PG_URL")

Key = tuple[str, str]
Sent = list[tuple[str, bytes, str]]  # (device, payload, frame_id) in publishing order


def full_or_ci(full: Any, ci: Any) -> Any:
    """The long run's figure under DEFED_FAULTS_FULL=1, else CI's shorter one."""
    return full if FULL else ci


class Gateway(GatewayProcess):
    """A gateway subprocess whose systemd notify socket is read all the time, as systemd does
    (a socket nobody reads fills up and blocks the daemon), keeping every state it sent."""

    def __init__(self, settings: dict[str, Any], workdir: Path, name: str = "gateway") -> None:
        super().__init__(settings, workdir)
        self.log_path = workdir / f"{name}.log"
        self.states: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def start(self, wait_ready: bool = True, timeout: float = 180.0) -> Gateway:
        """Start, and wait for READY=1 (generously: on a loaded 2-core machine start-up took 40 s)."""
        super().start(wait_ready, timeout)
        return self

    def _read(self) -> None:
        self.notify.settimeout(0.5)
        while not self._closed:
            try:
                message = self.notify.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            except OSError:
                return
            with self._changed:
                self.states += message.split("\n")
                self._changed.notify_all()

    def wait_for_notify(self, state: str, timeout: float) -> None:
        """Until the daemon sent a state line starting with `state`; fails at once if it exits."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(s.startswith(state) for s in self.states):
                if self.process is not None and self.process.poll() is not None:
                    raise AssertionError(f"gateway exited with {self.process.returncode}; log:\n{self.log()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"gateway did not send {state} within {timeout} s; log:\n{self.log()}")
                self._changed.wait(min(remaining, 0.5))

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def memory_kb(self, field: str = "VmHWM") -> int:
        """VmHWM (peak resident set) or VmRSS of the daemon, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.pid}/status")

    def kill(self) -> None:
        """SIGKILL: no drain, no `offline`, nothing committed after this instant."""
        self.signal(signal.SIGKILL)
        self.wait(30)

    def stop(self) -> None:
        self._closed = True
        super().stop()


class TimedListener(ResultListener):
    """A ResultListener that also keeps each message's arrival time (time.monotonic())."""

    def __post_init__(self) -> None:
        self.arrivals: list[float] = []
        super().__post_init__()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self._changed:
            self.arrivals.append(time.monotonic())
        super()._on_message(client, userdata, message)

    def result_counts(self) -> Counter[Key]:
        return Counter((p["device_id"], p["frame_id"]) for _, p in self.results())

    def first_result_after(self, instant: float) -> float | None:
        """When the first label / quarantine / error event arrived after `instant`."""
        with self._changed:
            timed = list(zip(self.arrivals, self.messages, strict=True))
        return next((t for t, (topic, _) in timed if t > instant and topic.rsplit("/", 1)[-1]
                     in ("label", "quarantine", "error")), None)

    def stats(self) -> list[dict[str, Any]]:
        with self._changed:
            return [p for t, p in self.messages if t == "defed/stats"]


def make_frames(digits: np.ndarray, n: int, devices: int = 4, prefix: str = "f", attack_every: int = 3) -> Sent:
    """n frames of real digits (every `attack_every`-th attacked) over `devices` cameras, with ids."""
    frames: Sent = []
    for i in range(n):
        digit = digits[i % len(digits)]
        image = attacked(digit[None], seed=i)[0] if attack_every and i % attack_every == 0 else digit
        frames.append((f"cam{i % devices}", png(image), f"{prefix}-{i}"))
    return frames


def keys(frames: Sent) -> set[Key]:
    return {(device, frame_id) for device, _, frame_id in frames}


class Stream(threading.Thread):
    """Publishes frames at a steady rate from a camera, in the background, like a live fleet."""

    def __init__(self, camera: Camera, frames: Sent, fps: float) -> None:
        super().__init__(daemon=True)
        self.camera, self.frames, self.fps = camera, frames, fps
        self.sent = 0
        self.sent_at: dict[str, float] = {}  # frame_id → when it was handed to the camera
        self.started_at = self.finished_at = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        self.started_at = time.monotonic()
        for i, (device, payload, frame_id) in enumerate(self.frames):
            # Pacing a load generator: the one place where waiting for the clock is the point.
            if self._halt.wait(max(0.0, self.started_at + i / self.fps - time.monotonic())):
                break
            self.sent_at[frame_id] = time.monotonic()
            self.camera.send(device, payload, frame_id=frame_id)
            self.sent = i + 1
        self.finished_at = time.monotonic()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    @property
    def achieved_fps(self) -> float:
        return self.sent / max(1e-9, (self.finished_at or time.monotonic()) - self.started_at)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """For conditions with nothing to wait on (a file, another process): poll until true or timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def audit_counts(url: str) -> Counter[Key]:
    """Audit rows per (device_id, frame_id), counted by the database itself."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT device_id, frame_id, COUNT(*) FROM quarantine_events GROUP BY device_id, frame_id"))
            return Counter({(device, frame): int(n) for device, frame, n in rows})
    finally:
        engine.dispose()


def empty_pg(url: str) -> None:
    """Drop the audit tables of a shared PostgreSQL test database."""
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS quarantine_events"))
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    import json

    found = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if doc.get("event") == event:
            found.append(doc)
    return found
