"""The one place cervrt imports OpenCV, so that whole-slide-sized PNG/JPEG files can be decoded.

OpenCV refuses to decode an image of more than 2^30 pixels unless the environment variable
``OPENCV_IO_MAX_IMAGE_PIXELS`` says otherwise, and it reads that variable once, when ``cv2`` is first
imported. Importing OpenCV through this module sets it first (``os.environ.setdefault``: a value the
user chose is kept). If ``cv2`` was already imported by someone else, the limit OpenCV was started
with stays in force; :data:`PIXEL_LIMIT_RAISED` then says so, for error messages.
"""

from __future__ import annotations

import os
import sys

__all__ = ["MAX_IMAGE_PIXELS", "PIXEL_LIMIT_RAISED", "cv2"]

#: Pixel limit given to OpenCV: 2^40 (a 1,048,576 x 1,048,576 image), far beyond any slide.
MAX_IMAGE_PIXELS = 1 << 40

#: True when cervrt set the limit before OpenCV was first imported (or the user set it themselves).
PIXEL_LIMIT_RAISED = "cv2" not in sys.modules or "OPENCV_IO_MAX_IMAGE_PIXELS" in os.environ

os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))

import cv2  # noqa: E402  (the environment variable must be set first)
