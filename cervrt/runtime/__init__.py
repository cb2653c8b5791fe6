"""The runtime: slide readers, tiling plan, stitcher and the Predictor. Never imports torch."""

from __future__ import annotations

__all__: list[str] = []
