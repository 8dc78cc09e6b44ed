"""From MQTT payload to model-shaped pixels: envelope, frame id, image decoding and conversion.

Images are decoded with OpenCV keeping their own depth and channels, then converted to the
bundle's input shape by `defed_core.data.fit_image` (the rule is in its docstring and in
docs/gateway.md, "Conversion"), the same rule `defed predict` and image-folder datasets use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

import cv2
import numpy as np

from defed_core.data import DatasetError, fit_image
from gateway import MAX_PIXELS
from gateway.frames import Delivery, ErrorCode, Frame, Rejection

MAX_FRAME_ID_CHARS = 128


class FrameError(Exception):
    def __init__(self, error: ErrorCode, detail: str, frame_id: str | None = None) -> None:
        super().__init__(detail)
        self.error: ErrorCode = error
        self.detail = detail
        self.frame_id = frame_id


def content_frame_id(payload: bytes) -> str:
    """The id of a frame that brings none: the same bytes redelivered get the same id."""
    return hashlib.sha256(payload).hexdigest()[:16]


class FrameCodec:
    """Turns a Delivery into a Frame in the bundle's input shape, or a Rejection."""

    def __init__(self, input_shape: tuple[int, int, int], max_payload_bytes: int) -> None:
        self.channels, self.height, self.width = input_shape
        self.max_payload_bytes = max_payload_bytes

    def decode(self, delivery: Delivery) -> Frame | Rejection:
        try:
            return self.decode_or_raise(delivery)
        except FrameError as exc:
            return Rejection(delivery, exc.frame_id, exc.error, exc.detail)
        except Exception as exc:  # a bug must not end the MQTT network thread
            # Answered like any undecodable frame; the fuzz tests (tests/faults) assert this never happens.
            return Rejection(delivery, None, "undecodable_image", f"internal error: {type(exc).__name__}: {exc}")

    def decode_or_raise(self, delivery: Delivery) -> Frame:
        payload = delivery.payload
        if len(payload) > self.max_payload_bytes:
            # Not hashed: we do not spend time on a payload we refuse, so it has no frame id.
            raise FrameError("payload_too_large", f"{len(payload)} bytes > limit of {self.max_payload_bytes}")
        if looks_like_json(payload):
            frame_id, ts, image = open_envelope(payload)
        else:
            frame_id, ts, image = user_property_id(delivery.properties), user_property_ts(delivery.properties), payload
        frame_id = frame_id or content_frame_id(payload)
        try:
            pixels = self.to_input_shape(decode_image(image))
        except FrameError as exc:
            exc.frame_id = frame_id
            raise
        return Frame(delivery, frame_id, ts, pixels, image)

    def to_input_shape(self, image: np.ndarray) -> np.ndarray:
        """Any decoded image (H', W'[, C']) → uint8 (H, W, C) by the shared conversion rule."""
        try:
            return fit_image(image, (self.channels, self.height, self.width))
        except DatasetError as exc:
            raise FrameError("unsupported_image", str(exc)) from None


def looks_like_json(payload: bytes) -> bool:
    # No image format starts with '{', so this cannot mistake an image for an envelope.
    return payload.lstrip()[:1] == b"{"


def open_envelope(payload: bytes) -> tuple[str | None, float | None, bytes]:
    """`{"frame_id": str, "ts": float, "image": base64}` → (frame_id, ts, image bytes)."""
    try:
        doc: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError("bad_envelope", f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FrameError("bad_envelope", "envelope must be a JSON object")
    frame_id = doc.get("frame_id")
    if frame_id is not None and (not isinstance(frame_id, str) or not 0 < len(frame_id) <= MAX_FRAME_ID_CHARS):
        raise FrameError("bad_envelope", f"frame_id must be a string of 1 to {MAX_FRAME_ID_CHARS} characters")
    ts = doc.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float)):
        raise FrameError("bad_envelope", "ts must be a number (seconds since the epoch)", frame_id)
    image = doc.get("image")
    if not isinstance(image, str) or not image:
        raise FrameError("bad_envelope", "envelope has no 'image' (base64 string)", frame_id)
    try:
        data = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FrameError("bad_envelope", f"'image' is not valid base64: {exc}", frame_id) from None
    return frame_id, None if ts is None else float(ts), data


def user_property_id(properties: dict[str, str]) -> str | None:
    frame_id = properties.get("frame_id")
    return frame_id if frame_id and len(frame_id) <= MAX_FRAME_ID_CHARS else None


def user_property_ts(properties: dict[str, str]) -> float | None:
    try:
        return float(properties["ts"])
    except (KeyError, ValueError):
        return None


def decode_image(data: bytes) -> np.ndarray:
    if not data:
        raise FrameError("undecodable_image", "empty image")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        # OpenCV raises (rather than returning None) for a header it refuses, e.g. dimensions
        # over its limits (a decompression bomb guard, see gateway/__init__.py).
        reason = " ".join(str(exc).split())[-200:]
        raise FrameError("unsupported_image", f"{len(data)} bytes: OpenCV refused the image: {reason}") from None
    if image is None or image.size == 0:
        raise FrameError("undecodable_image", f"{len(data)} bytes are not an image OpenCV can decode")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise FrameError("unsupported_image", f"{image.shape[1]}×{image.shape[0]} exceeds {MAX_PIXELS} pixels")
    return image
