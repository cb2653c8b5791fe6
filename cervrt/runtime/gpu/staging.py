"""``CudaFusion``: the fusion's GPU resources (primary context, kernels, two streams, pinned slots) and
the staging of uint8 patches into them: crop on the host into a pinned slot, upload on the copy
stream, normalise to float32 on the compute stream.

``stage`` fills one of ``num_slots`` (>= 2) pinned buffers and queues its upload on the copy stream,
so the upload of batch k+1 overlaps the engine's work on batch k; it waits only for the slot's
previous batch. Not thread-safe: use one CudaFusion per thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cervrt.constants import IMAGENET_MEAN, IMAGENET_STD, NUM_CLASSES, PATCH_SIZE
from cervrt.cuda import CudaError, PrimaryContext, driver, native_handle
from cervrt.cuda import memory as mem
from cervrt.errors import CervrtError
from cervrt.runtime.gpu.band import CudaBand
from cervrt.runtime.gpu.kernels import Kernels
from cervrt.runtime.reference import norm_coeffs
from cervrt.runtime.tiling import BlendMode

__all__ = ["CudaFusion", "Slot", "StagedBatch", "crop_patches"]


def crop_patches(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, patch: int, out: np.ndarray) -> None:
    """uint8 (n, P, P, 3) HWC crops of ``image`` at (ys[i], xs[i]) into ``out[:n]``, glass (255) past the edges."""
    height, width = image.shape[:2]
    for i, (y, x) in enumerate(zip(ys.tolist(), xs.tolist(), strict=True)):
        h, w = max(0, min(patch, height - y)), max(0, min(patch, width - x))
        out[i] = 255
        out[i, :h, :w] = image[y : y + h, x : x + w]


@dataclass(frozen=True)
class StagedBatch:
    """A batch of windows whose uint8 patches are (being) uploaded into one of CudaFusion's slots."""

    slot: int
    generation: int
    ys: np.ndarray
    xs: np.ndarray

    def __len__(self) -> int:
        return int(self.ys.size)


@dataclass
class Slot:
    """Pinned host and device buffers of one in-flight batch; events after its upload and its last reader."""

    host: dict[str, np.ndarray]
    device: dict[str, int]
    uploaded: Any
    released: Any
    generation: int = 0


def _check_batch(image: object, ys: object, xs: object, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise CervrtError(f"image must be an (H, W, 3) uint8 RGB array, got {got}")
    ys, xs = np.asarray(ys), np.asarray(xs)
    if ys.ndim != 1 or ys.shape != xs.shape or not 1 <= ys.size <= batch_size:
        raise CervrtError(f"ys and xs must be 1-D with the same length, 1 to {batch_size} windows")
    if not (np.issubdtype(ys.dtype, np.integer) and np.issubdtype(xs.dtype, np.integer)):
        raise CervrtError("window origins must be integers")
    if ys.min() < 0 or xs.min() < 0:
        raise CervrtError("window origins must be >= 0")
    return image, ys.astype(np.int64), xs.astype(np.int64)


class CudaFusion:
    """GPU resources of the fusion (context, kernels, streams, pinned slots); a context manager.

    ``kernels``: a PTX or cubin image; by default an ahead-of-time build beside the source, else
    NVRTC. Raises CervrtError("no CUDA device: ...") without a GPU.
    """

    def __init__(self, patch: int = PATCH_SIZE, num_classes: int = NUM_CLASSES, *, batch_size: int = 16,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 device: int = 0, num_slots: int = 2, kernels: bytes | None = None) -> None:
        if patch < 1 or batch_size < 1 or num_classes < 1 or num_slots < 2:
            raise CervrtError("patch, batch_size and num_classes must be positive and num_slots at least 2")
        self.patch, self.num_classes, self.batch_size = int(patch), int(num_classes), int(batch_size)
        self._scale, self._bias = norm_coeffs(mean, std)
        self._slots: list[Slot] = []
        self._allocs: list[int] = []
        self._pinned: list[int] = []
        self._bands: list[CudaBand] = []
        self._next_slot = 0
        self._kernels: Kernels | None = None
        self._stream = self._copy_stream = None
        self._context: PrimaryContext | None = PrimaryContext(int(device))
        try:
            with self.active():
                self._kernels = Kernels(kernels, self._context.ordinal)
                self._stream = mem.create_stream()
                self._copy_stream = mem.create_stream()
                for _ in range(num_slots):
                    self._slots.append(self._new_slot())
        except BaseException:
            self.close()
            raise

    # -- context -------------------------------------------------------------------------------

    def __enter__(self) -> CudaFusion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._context is not None

    def require_open(self) -> None:
        """CervrtError once closed."""
        if self._context is None:
            raise CervrtError("this CudaFusion is closed")

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Make this object's CUDA context current on the calling thread for the block."""
        self.require_open()
        with self._context.active():
            yield

    @property
    def stream(self) -> int:
        """Handle of the compute stream (its native address, ``get_cuda_native_handle``): the engine must
        enqueue its work here."""
        return native_handle(self._stream)

    @property
    def compute_stream(self) -> Any:
        """The compute stream itself (the CUstream object), for driver calls."""
        return self._stream

    # -- public API ----------------------------------------------------------------------------

    def stage(self, image: np.ndarray, ys: Sequence[int] | np.ndarray, xs: Sequence[int] | np.ndarray,
              origin: tuple[int, int] = (0, 0)) -> StagedBatch:
        """Crop up to batch_size patches of an (H, W, 3) uint8 image into a pinned slot and upload them
        asynchronously on the copy stream. ``origin``: where the image's pixel (0, 0) lies in the whole
        image (a band of a slide): patches are cropped at (ys, xs) - origin, windows keep (ys, xs)."""
        self.require_open()
        oy, ox = (int(v) for v in origin)
        image, ys, xs = _check_batch(image, np.asarray(ys) - oy, np.asarray(xs) - ox, self.batch_size)
        ys, xs = ys + oy, xs + ox
        index = self._next_slot
        slot = self._slots[index]
        n = ys.size
        with self.active():
            for event in (slot.uploaded, slot.released):  # the slot's last upload and its last reader
                mem.synchronize_event(event)
            crop_patches(image, ys - oy, xs - ox, self.patch, slot.host["patches"])
            slot.host["ys"][:n], slot.host["xs"][:n] = ys, xs
            for name, nbytes in (("patches", n * self.patch * self.patch * 3), ("ys", n * 8), ("xs", n * 8)):
                mem.copy_htod_async(slot.device[name], slot.host[name].ctypes.data, nbytes, self._copy_stream)
            mem.record_event(slot.uploaded, self._copy_stream)
        slot.generation += 1
        self._next_slot = (index + 1) % len(self._slots)
        return StagedBatch(index, slot.generation, ys, xs)

    def normalize(self, batch: StagedBatch) -> int:
        """Device pointer of the batch normalised to float32 (n, 3, P, P), ready on ``stream``."""
        self.require_open()
        slot = self.slot(batch)
        with self.active():
            mem.wait_event(self._stream, slot.uploaded)
            self.launch("cervrt_gather_normalize", len(batch) * self.patch * self.patch, slot.device["patches"],
                        slot.device["inputs"], len(batch), self.patch, *self._scale, *self._bias)
            mem.record_event(slot.released, self._stream)
        return slot.device["inputs"]

    def gate(self, batch: StagedBatch, class_probs: int, epsilon: float) -> int:
        """Device pointer of float32 (n, C) gate factors of the batch, computed on the compute stream from
        the engine's float32 (n, C - 1) class probabilities at ``class_probs`` (no host round trip)."""
        self.require_open()
        slot = self.slot(batch)
        with self.active():
            self.launch("cervrt_gate_factors", len(batch) * self.num_classes, int(class_probs), slot.device["gate"],
                        len(batch), self.num_classes, float(epsilon))
        return slot.device["gate"]

    def image(self, height: int, width: int, stride: int, blend: BlendMode | str = BlendMode.GAUSSIAN) -> CudaBand:
        """A device band for one image of ``height`` x ``width`` pixels."""
        self.require_open()
        band = CudaBand(self, height, width, stride, blend, on_close=self._bands.remove)
        self._bands.append(band)
        return band

    def synchronize(self) -> None:
        """Wait for all queued work on both streams."""
        with self.active():
            for stream in (self._copy_stream, self._stream):
                mem.synchronize_stream(stream)

    def close(self) -> None:
        """Free every device and pinned buffer, stream, event and the module; release the context."""
        if self._context is None:
            return
        cu = driver()
        for band in list(self._bands):
            with contextlib.suppress(CudaError):
                band.close()
        with contextlib.suppress(CudaError), self.active():
            releases = [(cu.cuStreamSynchronize, s) for s in (self._stream, self._copy_stream) if s is not None]
            releases += [(cu.cuEventDestroy, e) for slot in self._slots for e in (slot.uploaded, slot.released)]
            releases += [(cu.cuMemFree, p) for p in self._allocs] + [(cu.cuMemFreeHost, p) for p in self._pinned]
            releases += [(cu.cuStreamDestroy, s) for s in (self._stream, self._copy_stream) if s is not None]
            for release, handle in releases:  # each in its own guard: one failure frees the rest
                with contextlib.suppress(Exception):
                    release(handle)
            if self._kernels is not None:
                with contextlib.suppress(Exception):
                    self._kernels.unload()
        self._slots, self._allocs, self._pinned, self._bands = [], [], [], []
        self._context.release()
        self._context = None

    # -- shared with CudaBand and engines on the same context ------------------------------------

    def alloc(self, nbytes: int) -> int:
        """Device memory, freed by free() or close(); the context must be active."""
        ptr = mem.malloc_device(max(int(nbytes), 1))
        self._allocs.append(ptr)
        return ptr

    def free(self, ptr: int) -> None:
        """Free device memory from alloc() before close(); the context must be active."""
        self._allocs.remove(ptr)
        mem.free_device(ptr)

    def pinned(self, nbytes: int, dtype: type = np.uint8) -> np.ndarray:
        """A numpy view of page-locked host memory, freed by free_pinned() or close(); the context must be active."""
        ptr, array = mem.malloc_pinned(max(int(nbytes), 1), dtype)
        self._pinned.append(ptr)
        return array

    def free_pinned(self, array: np.ndarray) -> None:
        """Free pinned memory from pinned() before close(); drop every view of it first."""
        ptr = array.ctypes.data
        self._pinned.remove(ptr)
        mem.free_pinned(ptr)

    def launch(self, name: str, work: int, *values: float) -> None:
        """Launch kernel ``name`` over ``work`` grid-stride items on the compute stream."""
        self._kernels.launch(name, work, self._stream, *values)

    def slot(self, batch: StagedBatch) -> Slot:
        """The slot a batch from this object's stage() lives in; CervrtError if it was reused since."""
        if not isinstance(batch, StagedBatch) or not 0 <= batch.slot < len(self._slots):
            raise CervrtError("expected a StagedBatch returned by this CudaFusion's stage()")
        slot = self._slots[batch.slot]
        if slot.generation != batch.generation:
            raise CervrtError(f"this batch's slot was reused: use a batch before staging {len(self._slots)} more")
        return slot

    # -- set-up ----------------------------------------------------------------------------------

    def _new_slot(self) -> Slot:
        n, p = self.batch_size, self.patch
        host = {"patches": self.pinned(n * p * p * 3).reshape(n, p, p, 3), "ys": self.pinned(n * 8, np.int64),
                "xs": self.pinned(n * 8, np.int64), "gate": self.pinned(n * self.num_classes * 4, np.float32)}
        sizes = {"patches": n * p * p * 3, "ys": n * 8, "xs": n * 8, "gate": n * self.num_classes * 4,
                 "inputs": n * 3 * p * p * 4}
        device = {name: self.alloc(size) for name, size in sizes.items()}
        events = [mem.create_event() for _ in range(2)]
        return Slot(host, device, *events)
