"""Synthetic H&E-like cervical regions and slides in the MTCHI layout, with exact masks.

numpy and OpenCV only (never torch): the tests, demos, benchmarks and the export parity check all
draw their inputs from here. See :mod:`cervrt.synth.generator` for what a region looks like.
"""

from __future__ import annotations

from cervrt.synth.generator import (
    ATYPIA_EXTENT,
    GENERATOR,
    TRUTH_MASKS,
    synthesize_region,
    synthesize_slide,
    write_dataset,
)

__all__ = ["ATYPIA_EXTENT", "GENERATOR", "TRUTH_MASKS", "synthesize_region", "synthesize_slide", "write_dataset"]
