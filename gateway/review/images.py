"""Pictures for the review pages, as PNG: the frame, a thumbnail, a model view and a difference heatmap.

Model-sized images (28×28, 32×32) are enlarged with nearest-neighbour interpolation by a whole
factor, so every pixel stays a crisp square: the perturbation is in single pixels and any
smoothing would hide it. Pixels here are numpy arrays in OpenCV's layout (H, W[, C]), BGR order.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from gateway.codec import decode_image
from gateway.frame_export import sniff_format

VIEW_SIZE = 224  # a model view is enlarged to at least this many pixels on its longer side
THUMBNAIL_SIZE = 56  # 28×28 frames exactly twice
HEATMAP = cv2.COLORMAP_INFERNO  # black: no change; yellow-white: the largest change in this frame


def encode_png(pixels: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError(f"cannot encode {pixels.dtype} pixels of shape {pixels.shape} as PNG")
    return bytes(encoded.tobytes())


def enlarge(pixels: np.ndarray, size: int = VIEW_SIZE) -> np.ndarray:
    """Blown up by the whole factor that brings the longer side to at least `size`; never shrunk."""
    factor = max(1, math.ceil(size / max(pixels.shape[:2])))
    if factor == 1:
        return pixels
    return cv2.resize(pixels, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)


def displayable(image: bytes) -> np.ndarray:
    """A stored frame decoded for display: 8-bit, gray, BGR or BGRA (FrameError if it does not decode)."""
    pixels = decode_image(image)
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    return pixels


def frame_png(image: bytes) -> bytes:
    """The frame as received: the stored bytes themselves when they are a PNG, else re-encoded losslessly."""
    if sniff_format(image) == "png":
        return image
    return encode_png(displayable(image))


def thumbnail_png(image: bytes, size: int = THUMBNAIL_SIZE) -> bytes:
    """Fitted into size×size: small frames enlarged pixel by pixel, large ones shrunk by area."""
    pixels = displayable(image)
    longer = max(pixels.shape[:2])
    if longer <= size:
        return encode_png(enlarge(pixels, size))
    scale = size / longer
    width, height = max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale))
    return encode_png(cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA))


def to_bgr(chw: np.ndarray) -> np.ndarray:
    """A model image, float (C, H, W) in [0, 1] with C = 1 or 3 (RGB), as uint8 (H, W[, 3]) BGR."""
    pixels: np.ndarray = np.clip(np.rint(chw * 255.0), 0, 255).astype(np.uint8)  # (C, H, W)
    if pixels.shape[0] == 1:
        gray: np.ndarray = pixels[0]  # (H, W)
        return gray
    return np.ascontiguousarray(pixels.transpose(1, 2, 0)[:, :, ::-1])  # (H, W, 3) RGB → BGR


def model_view_png(chw: np.ndarray) -> bytes:
    """A model input or a denoiser output, enlarged."""
    return encode_png(enlarge(to_bgr(chw)))


def difference(x: np.ndarray, denoised: np.ndarray) -> np.ndarray:
    """|x − D(x)| averaged over channels: float (H, W), from two float (C, H, W) images in [0, 1]."""
    diff: np.ndarray = np.abs(x - denoised).mean(axis=0)
    return diff


def heatmap(diff: np.ndarray) -> np.ndarray:
    """A difference map coloured per image: its largest value is the top of the colour scale."""
    top = float(diff.max())
    scaled = diff / top if top > 0 else np.zeros_like(diff)
    levels = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)  # (H, W)
    return cv2.applyColorMap(levels, HEATMAP)  # (H, W, 3)


def heatmap_png(diff: np.ndarray) -> bytes:
    return encode_png(enlarge(heatmap(diff)))


def placeholder_png(size: int = THUMBNAIL_SIZE) -> bytes:
    """A grey square with a cross: the thumbnail of an event stored without its frame."""
    pixels = np.full((size, size), 225, np.uint8)
    cv2.line(pixels, (size // 4, size // 4), (3 * size // 4, 3 * size // 4), 150, 2)
    cv2.line(pixels, (3 * size // 4, size // 4), (size // 4, 3 * size // 4), 150, 2)
    return encode_png(pixels)
