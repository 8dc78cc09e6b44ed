"""The defed gateway daemon (`defed serve`) and the commands around it."""

import os

MAX_PIXELS = 50_000_000  # the largest image a frame may decode to (gateway.codec)

# OpenCV reads its decoder's pixel limit once, when it loads: set it before anything imports cv2,
# so that a small PNG declaring a gigapixel image is refused before its pixels are allocated.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))
