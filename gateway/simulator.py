"""A simulated camera fleet: real test images, some attacked, published to the gateway and measured.

    images = load_sample(sample_for(bundle))    # the shipped sample that suits the bundle
    frames = FramePool.build(bundle, images.images, images.labels, "fgsm")  # attacks computed once, up front
    fleet = Fleet(host, port, frames, devices=4, fps=5, adversarial_rate=0.2)
    with fleet:
        fleet.run(duration=10)            # publish; results are matched as they arrive
        fleet.wait_for_answers(10)
    print(fleet.measurement.summary().render())

Every frame carries a known id (an MQTT 5 user property `frame_id`, or a JSON envelope), so each
result on `defed/+/label|quarantine|error` is matched to the frame it answers by (device_id, frame_id).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
import paho.mqtt.client as paho
import torch
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from defed_core.bundle import Bundle
from defed_core.data import fit_image, to_tensor, to_uint8
from gateway.codec import decode_image
from gateway.errors import RuntimeFailure, UserError

AttackName = Literal["fgsm", "pgd"]
ImageFormat = Literal["png", "jpeg"]
SampleName = Literal["mnist", "cifar10"]
Key = tuple[str, str]  # (device_id, frame_id)

# The attacks the fleet can mount (all L∞), by their defed_core names.
ATTACKS: dict[AttackName, str] = {"fgsm": "fgsm", "pgd": "pgd-linf"}
PGD_STEPS = 40
RESULT_KINDS = ("label", "quarantine", "error")


@dataclass(frozen=True)
class Budget:
    """The fleet's L∞ attack budget on pixels in [0, 1], and PGD's step size."""

    eps: float
    pgd_step: float

    def with_eps(self, eps: float) -> Budget:
        """Another ε; PGD's step keeps its ratio to ε."""
        return Budget(eps, self.pgd_step * eps / self.eps)

    def describe(self, attack: AttackName) -> str:
        steps = f", {PGD_STEPS} steps of {pixel_value(self.pgd_step)}" if attack == "pgd" else ""
        return f"L∞ ε={pixel_value(self.eps)}{steps}"


def pixel_value(value: float) -> str:
    """A difference of pixel values in [0, 1]: in 255ths when it is a whole number of them."""
    levels = value * 255
    return f"{round(levels)}/255" if abs(levels - round(levels)) < 1e-6 else f"{value:g}"


# By the data a bundle was made for: the largest L∞ budget of its evaluation report. MNIST's
# customary ε=0.3 (PGD at ART's step of 0.01); CIFAR-10's 8/255, PGD stepping by 1/255.
BUDGETS: dict[SampleName, Budget] = {"mnist": Budget(0.3, 0.01), "cifar10": Budget(8 / 255, 1 / 255)}


def sample_for(bundle: Bundle) -> SampleName:
    """The shipped sample (and budget) that suits a bundle: its training data's, else by its channels.

    A colour bundle gets CIFAR-10 and a grayscale one MNIST; FramePool.build fits either to its size.
    """
    source = str(bundle.spec.dataset.get("source", "")).lower()
    for name in BUDGETS:
        if source.startswith(name):
            return name
    return "cifar10" if bundle.input_shape[0] == 3 else "mnist"


def default_format(bundle: Bundle) -> ImageFormat:
    """Colour frames go as JPEG, as camera frames do; grayscale ones as lossless PNG."""
    return "jpeg" if bundle.input_shape[0] == 3 else "png"


# --- the images ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FramePool:
    """Benign images and successful adversarial ones, uint8 (N, H, W, C) in RGB, and their encoding."""

    benign: np.ndarray
    adversarial: np.ndarray
    fmt: ImageFormat = "png"

    @classmethod
    def build(
        cls,
        bundle: Bundle,
        images: np.ndarray,
        labels: np.ndarray,
        attack: AttackName = "fgsm",
        budget: Budget | None = None,
        fmt: ImageFormat | None = None,
    ) -> FramePool:
        """Fit RGB or gray images to the bundle's input and attack its classifier.

        The budget and the format default to the bundle's (`BUDGETS[sample_for(bundle)]`,
        `default_format`). An adversarial frame is kept only if it still fools the classifier as the gateway decodes it:
        JPEG's loss can undo a perturbation, and a frame that no longer fools is not an attack.
        """
        from defed_core.attacks import AttackSpec, predict_labels, successful_adversarials

        budget = budget or BUDGETS[sample_for(bundle)]
        fmt = fmt or default_format(bundle)
        benign = np.stack([fit_rgb(image, bundle.input_shape) for image in images])  # (N, H, W, C)
        x = to_tensor(benign)  # (N, C, H, W)
        spec = AttackSpec(ATTACKS[attack], budget.eps, steps=PGD_STEPS, step_size=budget.pgd_step)
        classifier = bundle.classifier.cpu().eval()  # ART runs the attack on the CPU copy
        x_adv, _, y = successful_adversarials(
            classifier, x, torch.from_numpy(labels), spec, num_classes=len(bundle.classes)
        )
        adversarial = to_uint8(x_adv)  # (M, H, W, C)
        if len(adversarial):
            received = np.stack([as_received(image, fmt, bundle.input_shape) for image in adversarial])
            adversarial = adversarial[(predict_labels(classifier, to_tensor(received)) != y).numpy()]
        if len(adversarial) == 0:
            raise UserError(
                f"the {attack} attack ({budget.describe(attack)}) fooled the classifier on none of the "
                f"{len(x)} images as sent in {fmt}"
            )
        return cls(benign, adversarial, fmt)


def fit_rgb(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """An RGB or gray uint8 (H, W, C) image fitted to `shape` by the gateway's rule (which reads BGR)."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return fit_image(image, shape)


def encode(image: np.ndarray, fmt: ImageFormat) -> bytes:
    """uint8 (H, W, C) in RGB order as PNG or JPEG bytes (OpenCV's default JPEG quality, 95)."""
    if image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
    ok, buf = cv2.imencode(".png" if fmt == "png" else ".jpg", image)
    if not ok:
        raise RuntimeFailure(f"could not encode a frame as {fmt}")
    return bytes(buf.tobytes())


def as_received(image: np.ndarray, fmt: ImageFormat, shape: tuple[int, int, int]) -> np.ndarray:
    """An image after encoding and the gateway's decoding (gateway.codec): uint8 (H, W, C) RGB in `shape`."""
    return fit_image(decode_image(encode(image, fmt)), shape)


# --- what was measured ---------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


@dataclass(frozen=True)
class Summary:
    """The fleet's measurements at one moment."""

    sent: int
    sent_attacked: int
    answered: int
    labelled: int
    quarantined: int
    errors: int
    detected: int  # attacked frames quarantined
    false_positives: int  # benign frames quarantined
    elapsed_s: float
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # p50, p95, p99

    @property
    def detection_rate(self) -> float | None:
        return self.detected / self.sent_attacked if self.sent_attacked else None

    @property
    def false_positive_rate(self) -> float | None:
        benign = self.sent - self.sent_attacked
        return self.false_positives / benign if benign else None

    def render(self) -> str:
        def rate(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.1%}"

        def ms(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.1f} ms"

        benign = self.sent - self.sent_attacked
        lat = self.latency_ms
        return "\n".join(
            [
                f"frames sent          {self.sent} ({self.sent_attacked} attacked, {benign} benign) "
                f"in {self.elapsed_s:.1f} s",
                f"answered             {self.answered} ({self.labelled} labelled, {self.quarantined} quarantined, "
                f"{self.errors} errors)",
                f"detection rate       {rate(self.detection_rate)} ({self.detected}/{self.sent_attacked} attacked "
                "frames quarantined)",
                f"false-positive rate  {rate(self.false_positive_rate)} ({self.false_positives}/{benign} benign "
                "frames quarantined)",
                f"latency              p50 {ms(lat.get('p50'))}, p95 {ms(lat.get('p95'))}, p99 {ms(lat.get('p99'))}",
            ]
        )


class Measurement:
    """Frames sent and results received, matched by (device_id, frame_id); safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._sent: dict[Key, tuple[bool, float]] = {}  # key -> (attacked, sent at, monotonic)
        self._answers: dict[Key, str] = {}  # key -> result kind; the first answer counts
        self._latencies_ms: list[float] = []
        self._started = time.monotonic()

    def frame_sent(self, key: Key, attacked: bool) -> None:
        with self._lock:
            self._sent[key] = (attacked, time.monotonic())

    def result(self, key: Key, kind: str) -> None:
        now = time.monotonic()
        with self._lock:
            if key not in self._sent or key in self._answers:
                return  # another run's frame, or a redelivery
            self._answers[key] = kind
            self._latencies_ms.append((now - self._sent[key][1]) * 1000)
            self._lock.notify_all()

    def wait_all_answered(self, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: len(self._answers) >= len(self._sent), timeout)

    def summary(self) -> Summary:
        with self._lock:
            kinds = list(self._answers.values())
            attacked_kinds = [kind for key, kind in self._answers.items() if self._sent[key][0]]
            latencies = list(self._latencies_ms)
            quarantined = kinds.count("quarantine")
            detected = attacked_kinds.count("quarantine")
            return Summary(
                sent=len(self._sent),
                sent_attacked=sum(a for a, _ in self._sent.values()),
                answered=len(kinds),
                labelled=kinds.count("label"),
                quarantined=quarantined,
                errors=kinds.count("error"),
                detected=detected,
                false_positives=quarantined - detected,
                elapsed_s=time.monotonic() - self._started,
                latency_ms={f"p{q}": percentile(latencies, q) for q in (50, 95, 99)},
            )


# --- the fleet -----------------------------------------------------------------------------


def mqtt_client(client_id: str) -> paho.Client:
    return paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)


def connect(client: paho.Client, host: str, port: int, timeout: float = 10.0) -> None:
    """Connect and start the network thread; RuntimeFailure if the broker does not accept us in time."""
    connected = threading.Event()
    client.on_connect = lambda *_args: connected.set()
    try:
        client.connect(host, port)
    except OSError as exc:
        raise RuntimeFailure(f"cannot reach the broker at {host}:{port}: {exc}") from None
    client.loop_start()
    if not connected.wait(timeout):
        client.loop_stop()
        raise RuntimeFailure(f"the broker at {host}:{port} did not accept a connection within {timeout:g} s")


class Fleet:
    """N camera devices on one broker publishing at `fps` frames per second each, and a result listener."""

    def __init__(
        self,
        host: str,
        port: int,
        frames: FramePool,
        devices: int = 4,
        fps: float = 5.0,
        adversarial_rate: float = 0.1,
        envelope: bool = False,
        topic_prefix: str = "defed",
        seed: int = 0,
    ) -> None:
        self.host, self.port = host, port
        self.frames, self.fps, self.adversarial_rate = frames, fps, adversarial_rate
        self.envelope, self.prefix = envelope, topic_prefix
        self.device_ids = [f"cam-{i:02d}" for i in range(devices)]
        self.measurement = Measurement()
        self.stop = threading.Event()
        self._rng = np.random.default_rng(seed)
        self._run = uuid.uuid4().hex[:6]  # frame ids unique across runs sharing one audit log
        self._cameras: list[paho.Client] = []
        self._listener = mqtt_client(f"defed-sim-listener-{self._run}")

    # Lifecycle: listen first, so that no result arrives before we subscribed.
    def __enter__(self) -> Fleet:
        self._listen()
        for device in self.device_ids:
            camera = mqtt_client(f"defed-sim-{device}-{self._run}")
            camera.max_inflight_messages_set(100)
            connect(camera, self.host, self.port)
            self._cameras.append(camera)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for client in [*self._cameras, self._listener]:
            client.disconnect()
            client.loop_stop()

    def _listen(self) -> None:
        subscribed = threading.Event()
        self._listener.on_message = self._on_result
        self._listener.on_subscribe = lambda *_args: subscribed.set()
        connect(self._listener, self.host, self.port)
        self._listener.subscribe([(f"{self.prefix}/+/{kind}", 1) for kind in RESULT_KINDS])
        if not subscribed.wait(10):
            raise RuntimeFailure("the broker did not confirm the result subscription")

    def _on_result(self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        try:
            event = json.loads(message.payload)
            key = (str(event["device_id"]), str(event["frame_id"]))
        except (ValueError, KeyError, TypeError):
            return  # not a result of ours
        self.measurement.result(key, message.topic.rsplit("/", 1)[-1])

    def run(self, duration: float) -> None:
        """Publish round-robin over the devices at fps × devices frames per second until duration or stop."""
        interval = 1.0 / (self.fps * len(self.device_ids))
        start = time.monotonic()
        seq = 0
        while not self.stop.is_set():
            due = start + seq * interval
            if due - start >= duration:
                break
            if self.stop.wait(max(0.0, due - time.monotonic())):
                break
            device = seq % len(self.device_ids)
            self.publish(self._cameras[device], self.device_ids[device], f"{self._run}-{seq:07d}")
            seq += 1

    def publish(self, camera: paho.Client, device_id: str, frame_id: str) -> None:
        attacked = bool(self._rng.random() < self.adversarial_rate)
        pool = self.frames.adversarial if attacked else self.frames.benign
        image = encode(pool[self._rng.integers(len(pool))], self.frames.fmt)
        properties = None
        if self.envelope:
            payload = json.dumps(
                {"frame_id": frame_id, "ts": time.time(), "image": base64.b64encode(image).decode()}
            ).encode()
        else:
            payload = image
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
            properties.UserProperty = [("frame_id", frame_id), ("ts", str(time.time()))]
        self.measurement.frame_sent((device_id, frame_id), attacked)
        camera.publish(f"cameras/{device_id}/frames", payload, qos=1, properties=properties)

    def wait_for_answers(self, timeout: float) -> bool:
        """Until every sent frame has a result, or timeout seconds."""
        return self.measurement.wait_all_answered(timeout)
