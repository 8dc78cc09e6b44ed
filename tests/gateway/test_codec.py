"""Codec: envelopes, frame ids, conversion to the bundle's input shape (gray and colour), and every error code."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json

import cv2
import numpy as np
import pytest
from gateway_helpers import envelope, jpeg, png

from defed_core.data import fit_image, load_sample
from gateway.codec import FrameCodec, content_frame_id
from gateway.frames import Delivery, Frame, Rejection
from gateway.simulator import ImageFormat, encode

GRAY = FrameCodec((1, 28, 28), max_payload_bytes=1 << 20)
COLOUR = FrameCodec((3, 32, 32), max_payload_bytes=1 << 20)


def delivery(payload: bytes, **properties: str) -> Delivery:
    return Delivery("cameras/cam1/frames", "cam1", payload, 1, 1, 0.0, 0.0, dict(properties))


def digit() -> np.ndarray:
    image = np.zeros((28, 28), np.uint8)
    image[6:22, 12:16] = 255  # a "1"
    return image


class TestFrameIds:
    def test_bare_image_gets_content_id(self) -> None:
        """A bare image's id is the first 16 hex digits of the payload's SHA-256."""
        payload = png(digit())
        frame = GRAY.decode(delivery(payload))
        assert isinstance(frame, Frame)
        assert frame.frame_id == hashlib.sha256(payload).hexdigest()[:16] == content_frame_id(payload)

    def test_user_properties_carry_id_and_ts(self) -> None:
        """MQTT 5 user properties frame_id and ts apply to a bare image."""
        frame = GRAY.decode(delivery(png(digit()), frame_id="abc", ts="12.5"))
        assert isinstance(frame, Frame) and (frame.frame_id, frame.ts) == ("abc", 12.5)

    def test_envelope_carries_id_ts_and_image(self) -> None:
        """The envelope's frame_id and ts are used and its image is kept as the received bytes."""
        image = png(digit())
        frame = GRAY.decode(delivery(envelope(image, "e-1", 3.0)))
        assert isinstance(frame, Frame) and (frame.frame_id, frame.ts, frame.image) == ("e-1", 3.0, image)

    def test_envelope_without_id_is_hashed(self) -> None:
        """An envelope without frame_id gets the content id of the whole payload."""
        payload = envelope(png(digit()))
        frame = GRAY.decode(delivery(payload))
        assert isinstance(frame, Frame) and frame.frame_id == content_frame_id(payload)


class TestConversion:
    def test_gray_digit_passes_unchanged(self) -> None:
        """A 28×28 grayscale PNG reaches the model pixel for pixel."""
        frame = GRAY.decode(delivery(png(digit())))
        assert isinstance(frame, Frame)
        assert frame.pixels.shape == (28, 28, 1) and np.array_equal(frame.pixels[:, :, 0], digit())

    def test_colour_jpeg_is_gray_and_resized(self) -> None:
        """A 640×480 colour JPEG becomes a 28×28 grayscale frame."""
        image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
        frame = GRAY.decode(delivery(jpeg(image)))
        assert isinstance(frame, Frame) and frame.pixels.shape == (28, 28, 1) and frame.pixels.dtype == np.uint8

    def test_rgba_is_composited_onto_black(self) -> None:
        """Transparent pixels of an RGBA PNG become black background."""
        rgba = np.full((28, 28, 4), 255, np.uint8)
        rgba[:, :14, 3] = 0
        frame = GRAY.decode(delivery(png(rgba)))
        assert isinstance(frame, Frame)
        assert frame.pixels[:, :14].max() == 0 and frame.pixels[:, 14:].min() == 255

    def test_gray_to_colour_bundle(self) -> None:
        """A colour bundle gets a grayscale frame repeated over RGB, resized to its size."""
        frame = COLOUR.decode(delivery(png(digit())))
        assert isinstance(frame, Frame) and frame.pixels.shape == (32, 32, 3)
        assert np.array_equal(frame.pixels[..., 0], frame.pixels[..., 2])

    def test_bgr_becomes_rgb(self) -> None:
        """OpenCV's BGR order is turned into the bundle's RGB order."""
        bgr = np.zeros((32, 32, 3), np.uint8)
        bgr[..., 0] = 255  # blue
        frame = COLOUR.decode(delivery(png(bgr)))
        assert isinstance(frame, Frame) and frame.pixels[0, 0].tolist() == [0, 0, 255]

    def test_one_pixel_image_is_a_frame(self) -> None:
        """A 1×1 image is valid and is scaled up."""
        frame = GRAY.decode(delivery(png(np.array([[200]], np.uint8))))
        assert isinstance(frame, Frame) and frame.pixels.shape == (28, 28, 1)

    def test_sixteen_bit_png(self) -> None:
        """16-bit samples are scaled to 8 bits."""
        frame = GRAY.decode(delivery(png(np.full((28, 28), 65535, np.uint16))))
        assert isinstance(frame, Frame) and frame.pixels.min() == 255


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


HOSTILE = {
    "empty": (b"", "undecodable_image"),
    "random bytes": (np.random.default_rng(1).bytes(1000), "undecodable_image"),
    "NUL bytes": (b"\0" * 512, "undecodable_image"),
    "truncated PNG": (
        truncated(png(np.random.default_rng(2).integers(0, 255, (64, 64), dtype=np.uint8))),
        "undecodable_image",
    ),
    "broken JSON": (b'{"frame_id": "x", "image": ', "bad_envelope"),
    "bad base64": (b'{"frame_id": "x", "image": "!!!not base64!!!"}', "bad_envelope"),
    "envelope without image": (b'{"frame_id": "x"}', "bad_envelope"),
    "envelope with numeric id": (json.dumps({"frame_id": 5, "image": "AAAA"}).encode(), "bad_envelope"),
    "envelope of garbage": (json.dumps({"image": base64.b64encode(b"junk").decode()}).encode(), "undecodable_image"),
    "JSON list": (b"[1, 2]", "undecodable_image"),
}


class TestRejections:
    @pytest.mark.parametrize("name", sorted(HOSTILE))
    def test_hostile_payload_gets_its_error_code(self, name: str) -> None:
        """Each hostile payload is rejected with the error code of DESIGN §5."""
        payload, code = HOSTILE[name]
        result = GRAY.decode(delivery(payload))
        assert isinstance(result, Rejection) and result.error == code, result

    def test_oversized_payload(self) -> None:
        """A payload over the limit is refused unread, without a frame id."""
        result = FrameCodec((1, 28, 28), max_payload_bytes=100).decode(delivery(b"\xff" * 101))
        assert isinstance(result, Rejection) and (result.error, result.frame_id) == ("payload_too_large", None)

    def test_rejection_keeps_the_envelope_id(self) -> None:
        """An envelope whose image is undecodable is answered under its own frame id."""
        result = GRAY.decode(delivery(envelope(b"junk", "mine")))
        assert isinstance(result, Rejection) and result.frame_id == "mine"

    def test_truncated_jpeg_is_answered(self) -> None:
        """A truncated JPEG is either rejected or decoded (OpenCV pads it), never an exception."""
        data = jpeg(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
        result = GRAY.decode(delivery(data[: len(data) // 3]))
        assert isinstance(result, Frame | Rejection)
        if isinstance(result, Rejection):
            assert result.error == "undecodable_image"

    def test_two_channel_image_is_unsupported(self) -> None:
        """A layout that cannot be converted is `unsupported_image`."""
        ok, buf = cv2.imencode(".tiff", np.zeros((8, 8), np.float32))  # floating-point samples
        assert ok
        result = GRAY.decode(delivery(buf.tobytes()))
        assert isinstance(result, Rejection) and result.error == "unsupported_image"


def sample_jpeg_files() -> list[bytes]:
    """The shipped CIFAR-10 sample's JPEG files, as stored (the bytes a camera would send)."""
    from importlib import resources

    with np.load(str(resources.files("defed_core") / "samples" / "cifar10-test-sample.npz")) as z:
        blob, offsets = z["jpeg"], z["offsets"]
        return [blob[a:b].tobytes() for a, b in itertools.pairwise(offsets)]


class TestColourFrames:
    def test_jpeg_frame_is_the_rule_applied_to_the_decoded_image(self) -> None:
        """A colour JPEG reaches a colour bundle as fit_image of OpenCV's decoding, i.e. its RGB pixels."""
        data = jpeg(np.random.default_rng(4).integers(0, 255, (48, 64, 3), dtype=np.uint8))
        frame = COLOUR.decode(delivery(data))
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # (48, 64, 3) BGR
        assert isinstance(frame, Frame) and np.array_equal(frame.pixels, fit_image(decoded, (3, 32, 32)))

    @pytest.mark.parametrize("fmt", ["png", "jpeg"])
    def test_pure_red_arrives_in_channel_zero(self, fmt: ImageFormat) -> None:
        """A pure red frame from the simulator's encoder arrives as R=255 in channel 0, G and B near 0."""
        red = np.zeros((32, 32, 3), np.uint8)
        red[..., 0] = 255  # RGB
        frame = COLOUR.decode(delivery(encode(red, fmt)))
        assert isinstance(frame, Frame)
        r, g, b = (frame.pixels[..., c].astype(int) for c in range(3))
        assert r.min() >= 250 and g.max() <= 5 and b.max() <= 5, frame.pixels[0, 0]

    def test_shipped_cifar10_jpegs_arrive_as_the_sample_loads(self) -> None:
        """The sample's original JPEG files decode in the gateway to exactly the RGB images load_sample gives."""
        sample = load_sample("cifar10")
        files = sample_jpeg_files()
        assert len(files) == len(sample) == 256
        for i in range(0, 256, 17):
            frame = COLOUR.decode(delivery(files[i]))
            assert isinstance(frame, Frame) and np.array_equal(frame.pixels, sample.images[i]), i

    def test_simulator_png_is_lossless_in_rgb(self) -> None:
        """The simulator's PNG of an RGB image reaches the bundle pixel for pixel."""
        image = load_sample("cifar10").images[3]
        frame = COLOUR.decode(delivery(encode(image, "png")))
        assert isinstance(frame, Frame) and np.array_equal(frame.pixels, image)
