"""The one place cervrt imports OpenCV, so that whole-slide-sized PNG/JPEG files can be decoded.

OpenCV refuses to decode an image of more than 2^30 pixels unless the environment variable
``OPENCV_IO_MAX_IMAGE_PIXELS`` says otherwise, and it reads that variable once, when ``cv2`` is first
imported. Importing OpenCV through this module sets it first (``os.environ.setdefault``: a value the
user chose is kept). If ``cv2`` was already imported by someone else, the limit OpenCV started with
stays in force; :data:`PIXEL_LIMIT` is then OpenCV's default, for error messages.
"""

from __future__ import annotations

import os
import sys

__all__ = ["MAX_IMAGE_PIXELS", "PIXEL_LIMIT", "PIXEL_LIMIT_RAISED", "cv2"]

#: Pixel limit given to OpenCV: 2^40 (a 1,048,576 x 1,048,576 image), far beyond any slide.
MAX_IMAGE_PIXELS = 1 << 40
_VARIABLE = "OPENCV_IO_MAX_IMAGE_PIXELS"
_OPENCV_DEFAULT = 1 << 30

_chosen = os.environ.get(_VARIABLE, "")
_late = "cv2" in sys.modules  # OpenCV has already read the environment
os.environ.setdefault(_VARIABLE, str(MAX_IMAGE_PIXELS))

#: The decode limit OpenCV enforces in this process (as far as can be known from here).
PIXEL_LIMIT = int(_chosen) if _chosen.isdigit() else (_OPENCV_DEFAULT if _late else MAX_IMAGE_PIXELS)
#: True when images over OpenCV's default 2^30 pixels can be decoded.
PIXEL_LIMIT_RAISED = PIXEL_LIMIT > _OPENCV_DEFAULT

import cv2  # noqa: E402  (the environment variable must be set first)
