"""Fuzzing the frame path: generated payloads, envelopes, topics and device ids.

In-process, for volume: `FrameCodec.decode` and the event encoding must turn anything into a
model-shaped Frame or a Rejection with one of the four error codes, never raise, never hit the
codec's internal-error safety net. End to end, through a real broker and gateway: every fuzzed
message gets exactly one result or `error` event, and the daemon keeps serving.

DEFED_FUZZ_EXAMPLES sets the examples per in-process test (CI: 200 each; the long run in
docs/reliability.md used 20,000 × 5 = 100,000). DEFED_FUZZ_E2E sets the end-to-end messages.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import struct
import zlib
from pathlib import Path
from typing import Any, get_args

import cv2
import numpy as np
from faults_helpers import Gateway, TimedListener, full_or_ci
from gateway_helpers import Camera, gateway_settings, png
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.broker import PrivateBroker
from gateway.codec import MAX_FRAME_ID_CHARS, FrameCodec
from gateway.decision import EventFormatter, encode
from gateway.frames import Delivery, ErrorCode, Frame, Rejection
from gateway.mqtt import device_of

EXAMPLES = int(os.environ.get("DEFED_FUZZ_EXAMPLES", "200"))
E2E_MESSAGES = int(os.environ.get("DEFED_FUZZ_E2E", full_or_ci(1000, 80)))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ERRORS = set(get_args(ErrorCode))
LIMIT = 1 << 20  # payload limit of the codec under test: 1 MiB, so oversized payloads stay cheap
CODEC = FrameCodec((1, 28, 28), LIMIT)


# --- generators: plain functions of an RNG, shared by hypothesis and the end-to-end pass -------


def encoded_image(rng: random.Random) -> bytes:
    """A valid image of random size, depth, channels and format."""
    h, w = rng.randint(1, 64), rng.randint(1, 64)
    channels = rng.choice([1, 3, 4])
    ext = rng.choice([".png", ".jpg", ".bmp", ".tiff", ".webp"])
    depth = np.uint16 if ext in (".png", ".tiff") and rng.random() < 0.3 else np.uint8
    if ext in (".jpg", ".webp") and channels == 4:
        channels = 3
    pixels = np.random.default_rng(rng.getrandbits(32)).integers(0, np.iinfo(depth).max, (h, w, channels),
                                                                 dtype=depth, endpoint=True)
    ok, buf = cv2.imencode(ext, pixels)
    assert ok
    return buf.tobytes()


def corrupted(data: bytes, rng: random.Random) -> bytes:
    """Truncated, bit-flipped, spliced or duplicated bytes of an image."""
    kind = rng.choice(["truncate", "flip", "splice", "repeat", "zero-tail"])
    cut = rng.randint(0, max(0, len(data) - 1))
    if kind == "truncate":
        return data[:cut]
    if kind == "flip":
        mutable = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(mutable))
            mutable[i] ^= 1 << rng.randrange(8)
        return bytes(mutable)
    if kind == "splice":
        return data[:cut] + rng.randbytes(rng.randint(1, 64)) + data[cut:]
    if kind == "repeat":
        return data + data[: rng.randint(0, len(data))]
    return data[:cut] + b"\0" * (len(data) - cut)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def huge_header(rng: random.Random) -> bytes:
    """A small PNG or BMP whose header declares dimensions up to 2³¹−1 (a decompression bomb's shape)."""
    w, h = (rng.choice([1, 2**14, 2**16 - 1, 2**20 + 1, 2**31 - 1, rng.randint(1, 2**31 - 1)]) for _ in range(2))
    if rng.random() < 0.5:
        depth, colour = rng.choice([(8, 0), (8, 2), (16, 0), (8, 6), (1, 0), (8, 3)])
        ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
        body = zlib.compress(b"\0" * rng.randint(0, 4096))
        return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")
    signed_h = -h if rng.random() < 0.3 else h
    pixels = rng.randbytes(rng.randint(0, 256))
    info = struct.pack("<IiiHHIIiiII", 40, min(w, 2**31 - 1), max(-(2**31), min(signed_h, 2**31 - 1)), 1,
                       rng.choice([1, 8, 24, 32]), 0, len(pixels), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info)) + info + pixels


def any_image_bytes(rng: random.Random) -> bytes:
    choice = rng.random()
    if choice < 0.3:
        return encoded_image(rng)
    if choice < 0.7:
        return corrupted(encoded_image(rng), rng)
    if choice < 0.85:
        return huge_header(rng)
    return rng.randbytes(rng.randint(0, 2048))


def odd_json_value(rng: random.Random) -> Any:
    return rng.choice([None, True, 0, -1, 2**70, 1.5, float("nan"), float("inf"), "", "x" * rng.randint(1, 300),
                       "ünïcødé-📷", [], {}, [1, 2], {"a": 1}, "\u0000", "\ud7ff"])


def envelope_bytes(rng: random.Random) -> bytes:
    """A JSON envelope, well-formed or not, whose fields are right, wrong or missing."""
    doc: dict[str, Any] = {}
    if rng.random() < 0.8:
        image = any_image_bytes(rng)
        doc["image"] = base64.b64encode(image).decode() if rng.random() < 0.8 else odd_json_value(rng)
        if rng.random() < 0.1 and isinstance(doc["image"], str):
            doc["image"] = doc["image"][: rng.randint(0, len(doc["image"]))] + rng.choice(["", "=", "@", "\n"])
    if rng.random() < 0.6:
        doc["frame_id"] = rng.choice([f"id-{rng.random()}", "é" * MAX_FRAME_ID_CHARS, "x" * (MAX_FRAME_ID_CHARS + 1),
                                      odd_json_value(rng)])
    if rng.random() < 0.5:
        doc["ts"] = rng.choice([rng.uniform(0, 2e9), odd_json_value(rng)])
    if rng.random() < 0.2:
        doc[rng.choice(["extra", "", "🙂", "image2"])] = odd_json_value(rng)
    text = json.dumps(doc, allow_nan=True)
    mode = rng.random()
    if mode < 0.1:
        return json.dumps(rng.choice([[doc], "str", 1, None])).encode()
    if mode < 0.25:
        return text[: rng.randint(1, len(text))].encode()  # truncated JSON
    if mode < 0.3:
        return b"  \n\t" + text.encode("utf-16")[2:]  # not UTF-8
    return (" " * rng.randint(0, 3) + text).encode()


def device_id(rng: random.Random) -> str:
    """A device id that is a legal MQTT topic level: any Unicode but '/', '+', '#' and NUL."""
    alphabet = "abcXYZ019-_.: é漢字📷\u200b\ufeff\\'\"<>%$"
    n = rng.choice([1, 2, 8, 32, 255, 1000])
    return "".join(rng.choice(alphabet) for _ in range(n))


def fuzz_payload(rng: random.Random) -> tuple[bytes, dict[str, str]]:
    """A frame payload and its MQTT 5 user properties."""
    choice = rng.random()
    if choice < 0.5:
        payload = any_image_bytes(rng)
    elif choice < 0.9:
        payload = envelope_bytes(rng)
    elif choice < 0.95:
        payload = b"\0" * rng.randint(0, 4096)
    else:
        payload = rng.randbytes(LIMIT + rng.randint(1, 1024))  # over the limit
    properties = {}
    if rng.random() < 0.3:
        properties["frame_id"] = rng.choice(["p-" + device_id(rng), "x" * 200, ""])
    if rng.random() < 0.3:
        properties["ts"] = rng.choice(["1.5", "nan", "inf", "-0", "x", ""])
    return payload, properties


# --- in-process properties -----------------------------------------------------------------


def delivery(payload: bytes, device: str = "cam1", properties: dict[str, str] | None = None) -> Delivery:
    return Delivery(topic=f"cameras/{device}/frames", device_id=device, payload=payload, mid=1, qos=1,
                    received_at=0.0, received_wall=0.0, properties=properties or {})


def check_decoded(d: Delivery) -> None:
    """The codec's contract for any input, and the error event's JSON for any rejection."""
    result = CODEC.decode(d)
    if isinstance(result, Rejection):
        assert result.error in ERRORS, result
        assert not result.detail.startswith("internal error"), result.detail
        assert (result.error == "payload_too_large") == (len(d.payload) > LIMIT)
        event = json.loads(encode(EventFormatter.error(result, 0.5)))
        assert event["device_id"] == d.device_id and event["error"] == result.error
    else:
        assert isinstance(result, Frame)
        assert result.pixels.shape == (28, 28, 1) and result.pixels.dtype == np.uint8
        assert isinstance(result.frame_id, str) and 0 < len(result.frame_id) <= MAX_FRAME_ID_CHARS


seeds = st.randoms(use_true_random=False)


class TestCodecFuzz:
    @FUZZ
    @given(st.binary(max_size=4096))
    def test_random_bytes(self, payload: bytes) -> None:
        """Arbitrary bytes: a Frame or a Rejection, nothing else."""
        check_decoded(delivery(payload))

    @FUZZ
    @given(seeds)
    def test_valid_and_corrupted_images(self, rng: random.Random) -> None:
        """Images of every format, depth and size, valid, truncated, bit-flipped or spliced."""
        image = encoded_image(rng)
        check_decoded(delivery(image if rng.random() < 0.3 else corrupted(image, rng)))

    @FUZZ
    @given(seeds)
    def test_huge_declared_dimensions(self, rng: random.Random) -> None:
        """PNG and BMP headers declaring up to 2³¹−1 pixels a side are refused without allocating them."""
        check_decoded(delivery(huge_header(rng)))

    @FUZZ
    @given(seeds)
    def test_envelopes(self, rng: random.Random) -> None:
        """JSON envelopes, broken, mistyped, truncated, not UTF-8."""
        check_decoded(delivery(envelope_bytes(rng)))

    @FUZZ
    @given(st.text(max_size=300).filter(lambda s: not any(c in s for c in "/+#\0")), seeds)
    def test_topics_device_ids_and_properties(self, device: str, rng: random.Random) -> None:
        """Any Unicode device id and user properties: the device is parsed back, events are valid JSON."""
        assert device_of(f"cameras/{device}/frames", 1) == device
        payload, properties = fuzz_payload(rng)
        check_decoded(delivery(payload[: LIMIT + 16], device, properties))


# --- end to end ------------------------------------------------------------------------------


class TestGatewayFuzz:
    def test_every_fuzzed_message_is_answered_once(self, broker: PrivateBroker, bundles: dict[str, Path],
                                                   digits: np.ndarray, tmp_path: Path,
                                                   figures: dict[str, Any]) -> None:
        """Fuzzed messages on fuzzed device topics: one result or error each; the daemon lives on."""
        rng = random.Random(int(os.environ.get("DEFED_FUZZ_SEED", "20261127")))
        listener = TimedListener(broker.port)
        settings = gateway_settings(tmp_path / "state", broker.port, bundles["some"], max_payload_bytes=LIMIT,
                                    batching={"max_batch": 32, "max_wait_ms": 10, "queue_capacity": E2E_MESSAGES})
        gateway = Gateway(settings, tmp_path).start()
        camera = Camera(broker.port)
        devices = [f"fz{i}-{device_id(rng)}" for i in range(E2E_MESSAGES)]
        try:
            for device in devices:
                payload, properties = fuzz_payload(rng)
                camera.send(device, payload, frame_id=properties.get("frame_id") or None)
            camera.flush(120)
            answered = lambda s: {p["device_id"] for _, p in s.results()} >= set(devices)  # noqa: E731
            assert listener.wait_for(answered, 300), gateway.log()
            camera.send("after-fuzz", png(digits[0]))
            assert listener.wait_for(lambda s: any(p["device_id"] == "after-fuzz" for _, p in s.results()), 60)
            gateway.signal(signal.SIGTERM)
            assert gateway.wait(60) == 0
        finally:
            gateway.stop()
        per_device: dict[str, list[str]] = {}
        for topic, event in listener.results():
            per_device.setdefault(event["device_id"], []).append(topic.rsplit("/", 1)[-1])
        kinds: dict[str, int] = {}
        for device in devices:
            assert len(per_device[device]) == 1, (device, per_device[device])
            kinds[per_device[device][0]] = kinds.get(per_device[device][0], 0) + 1
        internal = [p for _, p in listener.results() if str(p.get("detail", "")).startswith("internal error")]
        assert not internal, internal[:3]
        figures |= {"messages": len(devices), "answered_once": len(devices), "by_kind": kinds}
        listener.close()
