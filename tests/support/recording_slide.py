"""A slide over an in-memory RGB image that records every read (glass past the edges), for band-reader tests."""

from __future__ import annotations

import numpy as np

__all__ = ["RecordingSlide"]


class RecordingSlide:
    def __init__(self, image):
        self.image, self.reads = image, []

    def read(self, y, x, h, w):
        self.reads.append((y, x, h, w))
        out = np.full((h, w, 3), 255, np.uint8)
        part = self.image[y : y + h, x : x + w]
        out[: part.shape[0], : part.shape[1]] = part
        return out
