"""Test helpers: the gateway as a real subprocess, a camera and a result listener on a real broker."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import paho.mqtt.client as paho
import torch
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from defed_core import Bundle
from defed_core.calibration import Calibration
from defed_core.testing import untrained_bundle

MNIST = Path("/work/shared/datasets/mnist.npz")
if not MNIST.is_file():
    MNIST = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "mnist.npz"


def mnist_digits(n: int, offset: int = 0) -> np.ndarray:
    """n real MNIST test digits, uint8 (n, 28, 28)."""
    with np.load(MNIST) as data:
        return np.asarray(data["x_test"][offset:offset + n])


def attacked(digits: np.ndarray, epsilon: float = 0.3, seed: int = 0) -> np.ndarray:
    """A sign-noise perturbation of size epsilon (an FGSM-shaped attack without the gradient)."""
    rng = np.random.default_rng(seed)
    noise = rng.choice([-1.0, 1.0], size=digits.shape) * epsilon * 255
    return np.clip(digits.astype(np.float64) + noise, 0, 255).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def write_bundle(path: Path, flag: str, digits: np.ndarray | None = None) -> Path:
    """An untrained bundle whose thresholds make `flag` happen: "none", "all", or "some" (about half)."""
    bundle = untrained_bundle()
    k = len(bundle.spec.members)
    if flag == "none":
        thresholds = [1e9] * k
    elif flag == "all":
        thresholds = [-1.0] * k
    else:
        assert digits is not None
        scores = bundle.scores(torch.from_numpy(digits[..., None]))  # (N, K)
        thresholds = [float(scores[:, 0].median())] + [1e9] * (k - 1)
    calibration = Calibration("mean_std", [0.0] * k, [1.0] * k, thresholds, images=2, k=3.0)
    bundle.with_calibration(calibration).save(path)
    return path


def load_bundle(path: Path) -> Bundle:
    return Bundle.load(path, "cpu")


# --- the gateway process -----------------------------------------------------------------


def toml_value(value: Any) -> str:
    return json.dumps(str(value) if isinstance(value, Path) else value)


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    lines = [f"{k} = {toml_value(v)}" for k, v in settings.items() if not isinstance(v, dict)]
    for group, values in settings.items():
        if isinstance(values, dict):
            lines.append(f"[{group}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


# One model cache for every gateway the suite starts, as on a hub across restarts: the test
# bundles share their weights, so ONNX Runtime's graph is exported once, not at every start.
MODEL_CACHE = Path(tempfile.mkdtemp(prefix="defed-test-model-cache-"))
atexit.register(shutil.rmtree, MODEL_CACHE, True)


def gateway_settings(state_dir: Path, port: int, bundle: Path, **overrides: Any) -> dict[str, Any]:
    """Settings for a test gateway; a dict override updates its group, anything else replaces."""
    settings: dict[str, Any] = {
        "state_dir": state_dir, "stats_interval_s": 1.0, "drain_timeout_s": 15.0,
        "mqtt": {"host": "127.0.0.1", "port": port, "client_id": f"gw-{uuid.uuid4().hex[:8]}",
                 "reconnect_min_s": 1, "reconnect_max_s": 2},
        "batching": {"max_batch": 16, "max_wait_ms": 20},
        "model": {"bundle": bundle, "device": "cpu", "threads": 1, "cache_dir": MODEL_CACHE},
        "metrics": {"listen": ""},
        "log": {"level": "info", "format": "json"},
    }
    for name, value in overrides.items():
        settings[name] = {**settings.get(name, {}), **value} if isinstance(value, dict) else value
    return settings


class GatewayProcess:
    """`python -m gateway.cli serve` in a subprocess, with a systemd-style notify socket."""

    def __init__(self, settings: dict[str, Any], workdir: Path) -> None:
        self.settings = settings
        self.config = write_config(workdir / f"gateway-{uuid.uuid4().hex[:6]}.toml", settings)
        self.log_path = workdir / "gateway.log"
        sock_dir = Path(tempfile.mkdtemp(prefix="defed-notify-"))
        self.notify_path = sock_dir / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> GatewayProcess:
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), "PYTHONUNBUFFERED": "1"}
        env = {k: v for k, v in env.items() if not k.startswith("DEFED_")}
        with self.log_path.open("ab") as log:
            command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config)]
            self.process = subprocess.Popen(command, stdout=log, stderr=log, env=env)
        if wait_ready:
            self.wait_for_notify("READY=1", timeout)
        return self

    def wait_for_notify(self, state: str, timeout: float) -> None:
        self.notify.settimeout(0.5)  # short, to notice a gateway that exited instead
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"gateway exited with {self.process.returncode}; log:\n{self.log()}")
            try:
                message = self.notify.recv(4096).decode()
            except TimeoutError:
                continue
            if state in message.split("\n"):
                return
        raise AssertionError(f"gateway did not send {state} within {timeout} s; log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def wait_for_log(self, event: str, timeout: float) -> None:
        """Until the log has a line with this event (a log file gives us nothing to wait on but polling)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("event") == event for e in self.log_events()):
                return
            time.sleep(0.1)
        raise AssertionError(f"no {event!r} in the gateway log within {timeout} s:\n{self.log()}")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.notify.close()


@contextmanager
def running_gateway(settings: dict[str, Any], workdir: Path) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(settings, workdir)
    try:
        yield gateway.start()
    finally:
        gateway.stop()


# --- MQTT clients of the test --------------------------------------------------------------


def mqtt_client(client_id: str, persistent: bool = True) -> paho.Client:
    return paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)


def connect(client: paho.Client, port: int, persistent: bool = True) -> None:
    props = Properties(PacketTypes.CONNECT)
    if persistent:
        props.SessionExpiryInterval = 3600
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.reconnect_delay_set(1, 2)
    client.connect("127.0.0.1", port, clean_start=not persistent, properties=props)
    client.loop_start()
    assert connected.wait(10), "test client could not connect"


@dataclass
class ResultListener:
    """Collects everything the gateway publishes under `defed/`."""

    port: int
    messages: list[tuple[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self.client = mqtt_client(f"listener-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        connect(self.client, self.port)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.subscribe("defed/#", qos=1)
        assert subscribed.wait(10)
        self.client.on_connect = lambda client, *args: client.subscribe("defed/#", qos=1)

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        payload: Any = message.payload.decode()
        if not message.topic.endswith("/status"):
            payload = json.loads(payload)
        with self._changed:
            self.messages.append((message.topic, payload))
            self._changed.notify_all()

    def results(self) -> list[tuple[str, dict[str, Any]]]:
        """Label, quarantine and error events, in arrival order."""
        with self._changed:
            return [(t, p) for t, p in self.messages if t.rsplit("/", 1)[-1] in ("label", "quarantine", "error")]

    def statuses(self) -> list[str]:
        with self._changed:
            return [p for t, p in self.messages if t == "defed/status"]

    def wait_for(self, condition: Callable[[ResultListener], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def wait_for_frames(self, keys: set[tuple[str, str]], timeout: float) -> bool:
        return self.wait_for(lambda s: keys <= {(p["device_id"], p["frame_id"]) for _, p in s.results()}, timeout)

    def missing(self, keys: set[tuple[str, str]]) -> list[tuple[str, str]]:
        """The keys without a result yet: for assertion messages."""
        return sorted(keys - {(p["device_id"], p["frame_id"]) for _, p in self.results()})

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Camera:
    """Publishes frames with QoS 1, like a device in the fleet; paho queues them while disconnected."""

    open_cameras: ClassVar[list[Camera]] = []  # closed after every test by conftest

    def __init__(self, port: int) -> None:
        Camera.open_cameras.append(self)
        self.client = mqtt_client(f"camera-{uuid.uuid4().hex[:8]}")
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self._acked: set[int] = set()
        self._changed = threading.Condition()
        self.client.on_publish = self._on_publish
        connect(self.client, port)
        self.mids: list[int] = []

    def _on_publish(self, _c: paho.Client, _u: object, mid: int, *_rest: object) -> None:
        with self._changed:
            self._acked.add(mid)
            self._changed.notify_all()

    def send(self, device: str, payload: bytes, frame_id: str | None = None, ts: float | None = None) -> None:
        props = None
        if frame_id is not None or ts is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [(k, str(v)) for k, v in (("frame_id", frame_id), ("ts", ts)) if v is not None]
        self.mids.append(self.client.publish(f"cameras/{device}/frames", payload, qos=1, properties=props).mid)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until the broker has acknowledged every frame sent so far."""
        with self._changed:
            done = self._changed.wait_for(lambda: self._acked.issuperset(self.mids), timeout)
        assert done, "camera could not publish all frames"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def envelope(image: bytes, frame_id: str | None = None, ts: float | None = None) -> bytes:
    doc: dict[str, Any] = {"image": __import__("base64").b64encode(image).decode()}
    if frame_id is not None:
        doc["frame_id"] = frame_id
    if ts is not None:
        doc["ts"] = ts
    return json.dumps(doc).encode()


def unacknowledged(port: int, client_id: str, protocol: str = "5", wait: float = 1.5) -> int:
    """Connect as the gateway's own session and count what the broker still wants to deliver."""
    received: list[int] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, manual_ack=True,
                         protocol=MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311,
                         clean_session=None if protocol == "5" else False)
    client.on_message = lambda _c, _u, m: received.append(m.mid)
    props = Properties(PacketTypes.CONNECT) if protocol == "5" else None
    if props is not None:
        props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False if protocol == "5" else paho.MQTT_CLEAN_START_FIRST_ONLY,
                   properties=props)
    client.loop_start()
    time.sleep(wait)  # nothing to wait on: we are checking that nothing arrives
    client.disconnect()
    client.loop_stop()
    return len(received)
