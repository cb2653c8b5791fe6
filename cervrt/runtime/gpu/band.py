"""``CudaBand``: one image's band of weighted sums on the device, fed by a CudaFusion's staged batches
and an engine's device output; ``add`` / ``finish`` hand back uint8 labels like BandStitcher."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from cervrt.cuda import check, driver
from cervrt.cuda import memory as mem
from cervrt.errors import CervrtError
from cervrt.runtime.stitcher import BandFusion, LabelChunk
from cervrt.runtime.tiling import BlendMode, blend_weights

if TYPE_CHECKING:
    from cervrt.runtime.gpu.staging import CudaFusion, Slot, StagedBatch

__all__ = ["CudaBand", "accumulate_box"]


def accumulate_box(ys_band: np.ndarray, xs: np.ndarray, patch: int, band_rows: int, width: int) -> tuple[int, ...]:
    """(y0, x0, h, w): the windows' bounding box clipped to the band, the accumulate kernel's grid."""
    y0, x0 = max(0, int(ys_band.min())), max(0, int(xs.min()))
    y1, x1 = min(band_rows, int(ys_band.max()) + patch), min(width, int(xs.max()) + patch)
    return y0, x0, max(0, y1 - y0), max(0, x1 - x0)


class CudaBand(BandFusion):
    """One image's band on the device: ``add(batch, probs, gate=None)`` / ``finish()`` like BandStitcher.

    ``probs`` is a device pointer (int or CUdeviceptr) to float32 (n, num_classes, P, P) written on
    the compute stream; ``gate`` a host float32 (n, num_classes) array of 0/1 factors, a device pointer
    to them (``CudaFusion.gate``, on the compute stream) or None. ``add`` makes the compute stream wait
    for the batch's upload itself (the window origins it reads), whether or not it was normalised. The
    sums are double-buffered on the device: ``nbytes = 2 * 4 * (num_classes + 1) * band_rows * width``.
    Uses only the fusion's public surface (active, alloc/free, pinned, launch, slot, compute_stream);
    ``on_close`` is called with the band once it is closed (CudaFusion.image() passes its bookkeeping).
    """

    def __init__(self, fusion: CudaFusion, height: int, width: int, stride: int,
                 blend: BlendMode | str = BlendMode.GAUSSIAN,
                 on_close: Callable[[CudaBand], None] | None = None) -> None:
        super().__init__(height, width, fusion.num_classes, fusion.patch, stride)
        self._fusion = fusion
        self._on_close = on_close
        self._closed = False
        self._plane = self.band_rows * self.width
        self.nbytes = 2 * 4 * (self.num_classes + 1) * self._plane
        stream = fusion.compute_stream
        with fusion.active():
            # Kept alive with the band; queued on the compute stream so that the kernels see it.
            self._host_weights = np.ascontiguousarray(blend_weights(blend, self.patch))
            self._weights = fusion.alloc(self._host_weights.nbytes)
            mem.copy_htod_async(self._weights, self._host_weights.ctypes.data, self._host_weights.nbytes, stream)
            self._buffers = [fusion.alloc(self.nbytes // 2) for _ in range(2)]
            check(driver().cuMemsetD32Async(self._buffers[0], 0, (self.num_classes + 1) * self._plane, stream),
                  "cuMemsetD32Async")
            self._labels = fusion.alloc(self._plane)
            self._host_labels = fusion.pinned(self._plane)

    def __enter__(self) -> CudaBand:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._closed:
            raise CervrtError("this band is closed: ask CudaFusion.image() for a new one")
        self._fusion.require_open()

    def add(self, batch: StagedBatch, probs: Any, gate: np.ndarray | None = None) -> list[LabelChunk]:
        """Accumulate a staged batch's probabilities; return the label blocks no later window can touch."""
        self._require_open()
        slot = self._fusion.slot(batch)
        ys, xs = self._check_windows(batch.ys, batch.xs)
        probs_ptr = int(probs)
        if probs_ptr <= 0:
            raise CervrtError("probs must be a device pointer to float32 (n, classes, P, P)")
        fusion = self._fusion
        with fusion.active():
            mem.wait_event(fusion.compute_stream, slot.uploaded)  # ys/xs on the device
            gate_ptr = self._upload_gate(slot, gate, ys.size)

            def run(lo: int, hi: int, ys_band: np.ndarray) -> None:
                self._accumulate(slot, probs_ptr, gate_ptr, lo, hi, ys_band, xs[lo:hi])

            chunks = self._feed(ys, xs, run)
            mem.record_event(slot.released, fusion.compute_stream)
        return chunks

    def finish(self) -> list[LabelChunk]:
        """The label blocks of every row not handed out yet."""
        self._require_open()
        with self._fusion.active():
            return self._finish()

    def close(self) -> None:
        """Free the band's device and pinned memory once its queued work is done (CudaFusion.close does too)."""
        if self._closed:
            return
        self._closed = self._finished = True
        fusion = self._fusion
        if not fusion.is_open:
            return
        if self._on_close is not None:
            self._on_close(self)
        with fusion.active():
            mem.synchronize_stream(fusion.compute_stream)
            for ptr in (self._weights, *self._buffers, self._labels):
                fusion.free(ptr)
            fusion.free_pinned(self._host_labels)
        del self._host_labels  # a view of freed memory

    def _upload_gate(self, slot: Slot, gate: np.ndarray | int | None, n: int) -> int:
        if gate is None:
            return 0
        if isinstance(gate, int | np.integer) and not isinstance(gate, bool):
            if int(gate) <= 0:
                raise CervrtError("gate must be None, a float32 array or a device pointer to one")
            return int(gate)
        gate = np.asarray(gate)
        if gate.dtype != np.float32 or gate.shape != (n, self.num_classes):
            raise CervrtError(f"gate must be None or float32 ({n}, {self.num_classes}), got {gate.dtype} {gate.shape}")
        slot.host["gate"][: gate.size] = gate.ravel()
        mem.copy_htod_async(slot.device["gate"], slot.host["gate"].ctypes.data, gate.nbytes,
                            self._fusion.compute_stream)
        return slot.device["gate"]

    def _accumulate(self, slot: Slot, probs: int, gate: int, lo: int, hi: int, ys_band: np.ndarray,
                    xs: np.ndarray) -> None:
        y0, x0, h, w = accumulate_box(ys_band, xs, self.patch, self.band_rows, self.width)
        acc = self._buffers[0]
        c, p = self.num_classes, self.patch
        self._fusion.launch(
            "cervrt_accumulate", h * w, acc, acc + 4 * c * self._plane, c, self.band_rows, self.width,
            probs + 4 * lo * c * p * p, slot.device["ys"] + 8 * lo, slot.device["xs"] + 8 * lo, self._y0, hi - lo,
            self._weights, gate + 4 * lo * c if gate else 0, p, y0, x0, h, w)

    def _argmax(self, rows: int) -> np.ndarray:
        fusion, acc = self._fusion, self._buffers[0]
        fusion.launch("cervrt_argmax", rows * self.width, acc, acc + 4 * self.num_classes * self._plane, self._labels,
                      self.num_classes, self.band_rows, self.width, rows)
        nbytes = rows * self.width
        mem.copy_dtoh_async(self._host_labels.ctypes.data, self._labels, nbytes, fusion.compute_stream)
        mem.synchronize_stream(fusion.compute_stream)
        return self._host_labels[:nbytes].reshape(rows, self.width).copy()

    def _shift(self, shift: int, filled: int) -> None:
        src, dst = self._buffers
        self._fusion.launch("cervrt_shift_band", (self.num_classes + 1) * self._plane, src, dst,
                            self.num_classes + 1, self.band_rows, self.width, shift, filled)
        self._buffers = [dst, src]
