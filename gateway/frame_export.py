"""A quarantined frame written out as an image file, chosen by the file's extension.

The stored bytes are the frame as the camera sent it. When they already are in the format asked
for they are written unchanged (the exported file is then the evidence itself, same SHA-256);
otherwise they are decoded and re-encoded with OpenCV.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from gateway.errors import UserError

# Extension → the format name `sniff_format` gives the same bytes.
FORMATS = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".webp": "webp",
}
SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"GIF8", "gif"),
)


def sniff_format(image: bytes) -> str | None:
    """The image format its first bytes announce, or None."""
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "webp"
    return next((name for signature, name in SIGNATURES if image.startswith(signature)), None)


def export_frame(image: bytes, out: Path) -> bool:
    """Write `image` to `out` in the format of its extension; True if the stored bytes were copied as-is."""
    wanted = FORMATS.get(out.suffix.lower())
    if wanted is None:
        raise UserError(f"--out {out}: unknown image extension; use one of {', '.join(sorted(FORMATS))}")
    copied = sniff_format(image) == wanted
    data = image if copied else reencode(image, out.suffix.lower(), wanted)
    try:
        out.write_bytes(data)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    return copied


def reencode(image: bytes, extension: str, wanted: str) -> bytes:
    pixels = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise UserError(f"the stored frame ({len(image)} bytes) is not an image OpenCV can decode")
    if wanted == "jpeg" and pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGRA2BGR)  # JPEG has no alpha channel
    try:
        ok, encoded = cv2.imencode(extension, pixels)
    except cv2.error:
        ok = False
    if not ok:
        raise UserError(f"OpenCV cannot write this frame ({pixels.dtype}, shape {pixels.shape}) as {wanted}; try .png")
    return bytes(encoded.tobytes())
