"""The gateway's vocabulary: what a frame is at each stage of its path through the daemon.

    Delivery (MQTT message as received) → Frame (decoded, model-shaped) or Rejection (error code)
    → batch → Verdict (the ensemble's decision for one frame) → label / quarantine / error event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

ErrorCode = Literal["payload_too_large", "undecodable_image", "bad_envelope", "unsupported_image"]


@dataclass(frozen=True)
class Delivery:
    """One MQTT message on a frame topic, with what is needed to acknowledge it later."""

    topic: str
    device_id: str
    payload: bytes
    mid: int
    qos: int
    received_at: float  # time.monotonic() on arrival: latency_ms is measured from here
    received_wall: float  # time.time() on arrival, for the audit log
    properties: dict[str, str]  # MQTT 5 user properties (empty under 3.1.1)


@dataclass(frozen=True)
class Frame:
    """A decodable frame, converted to the bundle's input shape."""

    delivery: Delivery
    frame_id: str
    ts: float | None
    pixels: np.ndarray  # (H, W, C) uint8 in the bundle's input shape
    image: bytes  # the encoded image as received (inside the envelope when there was one)


@dataclass(frozen=True)
class Rejection:
    """A frame that could not be processed, and why."""

    delivery: Delivery
    frame_id: str | None
    error: ErrorCode
    detail: str


@dataclass(frozen=True)
class Verdict:
    """The ensemble's decision on one frame, as plain Python values."""

    label: int
    original_label: int
    adversarial: bool
    confidence: float
    scores: list[float]
    flagged_by: list[int]  # indices of the members whose score crossed their threshold
