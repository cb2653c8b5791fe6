"""DICOM Segmentation (SEG) of a label mask, written with highdicom (the ``dicom`` extra).

``NAME.seg/`` is a folder with one SEG instance per pyramid level (``level-0.dcm``, ``level-1.dcm``,
...; one series, one Pyramid UID): the mask at the processing resolution, then subsampled
nearest-neighbour by 2, 4, ... until a level fits in one tile. Each instance is tiled (``tile`` px
frames, empty frames left out). There is one segment per class present (background excluded),
numbered 1.. in class order, labelled with the class name, its recommended display colour the
palette's; the segmentation type is LABELMAP where highdicom has it (0.24 and later), else BINARY.
Every segment carries the algorithm identification: ``cervrt <arch>``, the cervrt version, and the
model's sha256 as a parameter.

Geometry (SPEC "Coordinates"): mask pixel (i, j) covers level-0 pixels [j * d, (j + 1) * d) x
[i * d, (i + 1) * d) with ``d = downsample``; the SEG's pixel spacing is ``d`` times the source's and
its pixels are centred on the source pixels they cover (DICOM places a pixel at its centre: the SEG's
origin lies (F - 1) / 2 source pixels past the source's, F = d * 2^k). From a DICOM slide (``source_datasets`` of a
:class:`~cervrt.runtime.dicom_slide.DicomSlide`) the SEG references the source series, study and
frame of reference, so that a viewer overlays it; from any other slide it is standalone: a source
description (never written) gives it a new study, frame of reference and the slide's level-0
geometry (pixel spacing = the mpp, or 1 um when unknown).

Memory and disk: the rows go to a raw file beside the target (height x width bytes of disk). At the
end each level is copied into memory once (height x width / 4^k bytes) and highdicom holds that
array and the level's encoded frames until the instance is saved -- highdicom takes whole arrays.
Uncompressed (no JPEG-LS encoder installed), a level over 4 GiB cannot be one instance: refused
before anything is written, naming the fix (``pip install pyjpegls``).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import secrets
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cervrt import __version__
from cervrt._io import optional_import
from cervrt.errors import CervrtError
from cervrt.runtime.row_stream import RowStream

__all__ = ["DicomSegWriter", "segment_classes"]

_TILE = 256
_MAX_UNENCAPSULATED = (1 << 32) - 2  # bytes of one uncompressed Pixel Data element
_PRIVATE_SCHEME = "99CERVRT"


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _level_factors(height: int, width: int, tile: int) -> list[int]:
    factors = [1]
    while max(-(-height // factors[-1]), -(-width // factors[-1])) > tile:
        factors.append(factors[-1] * 2)
    return factors


def segment_classes(dataset: Any) -> dict[int, str]:
    """Segment number -> class name (the segment label) of a SEG read back with pydicom or highdicom."""
    return {int(s.SegmentNumber): str(s.SegmentLabel) for s in dataset.SegmentSequence}


class DicomSegWriter(RowStream):
    """Streams a ``height`` x ``width`` uint8 label mask into a DICOM SEG series in the folder ``path``."""

    kind = "DICOM SEG"

    def __init__(self, path: str | os.PathLike[str], height: int, width: int, class_names: Sequence[str],
                 palette: Sequence[Sequence[int]], *, downsample: float = 1.0, mpp: float | None = None,
                 level0_size: tuple[int, int] | None = None, source_datasets: Sequence[Any] | None = None,
                 model_arch: str = "unknown", model_sha256: str | None = None, tile: int = _TILE) -> None:
        self._hd = optional_import("highdicom", "dicom")
        self._pydicom = optional_import("pydicom", "dicom")
        self._take_geometry(path, height, width, class_names, palette)
        self.downsample, self.mpp, self.tile = float(downsample), mpp, int(tile)
        self.level0_size = level0_size or (round(self.width * self.downsample), round(self.height * self.downsample))
        self.source_datasets = list(source_datasets) if source_datasets else None
        self.model_arch, self.model_sha256 = model_arch, model_sha256
        self.factors = _level_factors(self.height, self.width, self.tile)
        self._check_size()
        try:
            fd, raw = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".rows", dir=self.path.parent)
        except OSError as exc:
            raise CervrtError(f"cannot write to {self.path.parent}: {exc.strerror}") from exc
        self._raw: BinaryIO | None = os.fdopen(fd, "w+b")
        self._raw_path = raw
        self._cleanup = weakref.finalize(self, _remove, raw)
        self._present = np.zeros(256, bool)
        self._next_row = 0
        self.files: list[Path] = []

    # --- the sink protocol -----------------------------------------------------------------

    def write(self, first_row: int, labels: np.ndarray) -> None:
        """Append mask rows ``first_row ..`` (uint8 (n, width))."""
        if self._raw is None:
            raise CervrtError(f"the DICOM SEG writer of {self.path} is closed")
        self.check_rows(first_row, labels)
        self._present[np.unique(labels)] = True
        try:
            self._raw.write(np.ascontiguousarray(labels).data)
        except OSError as exc:
            raise CervrtError(f"cannot write the mask rows beside {self.path}: {exc.strerror}") from exc
        self._next_row += labels.shape[0]

    def finish(self) -> None:
        """Write the SEG instances into ``path`` (a folder, renamed into place); refuses an incomplete mask."""
        if self._raw is None:
            return
        if self._next_row != self.height:
            self.abort()
            raise CervrtError(f"the DICOM SEG {self.path} is incomplete: {self._next_row} of {self.height} rows")
        tmp = self.path.with_name(f"{self.path.name}.tmp-{secrets.token_hex(4)}")
        try:
            tmp.mkdir()
            self._raw.flush()
            mask = np.memmap(self._raw_path, np.uint8, "r", shape=(self.height, self.width))
            self._write_levels(mask, tmp)
            del mask
            _replace_dir(tmp, self.path)
            self.files = sorted(self.path.glob("level-*.dcm"))
        except CervrtError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CervrtError(f"highdicom could not write {self.path}: {type(exc).__name__}: {exc}") from exc
        finally:
            self.abort()

    close = finish

    def abort(self) -> None:
        """Drop the buffered rows; nothing is left."""
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.close()
            self._cleanup()

    # --- work ------------------------------------------------------------------------------

    def _transfer_syntax(self) -> str:
        uid = self._pydicom.uid
        try:
            import jpeg_ls  # noqa: F401  (pyjpegls: pydicom's JPEG-LS encoder)
        except ImportError:
            return str(uid.ExplicitVRLittleEndian)
        return str(uid.JPEGLSLossless)

    def _check_size(self) -> None:
        if self._transfer_syntax() == str(self._pydicom.uid.ExplicitVRLittleEndian) and \
                self.height * self.width > _MAX_UNENCAPSULATED:
            raise CervrtError(f"a {self.height} x {self.width} mask is over the 4 GiB of one uncompressed DICOM "
                              "instance: install a JPEG-LS encoder (pip install pyjpegls) or use --format ome-zarr")

    def _segment_type(self) -> str:
        names = {m.name for m in self._hd.seg.SegmentationTypeValues}
        return "LABELMAP" if "LABELMAP" in names else "BINARY"

    def _descriptions(self, classes: list[int]) -> list[Any]:
        hd = self._hd
        from pydicom.sr.codedict import codes

        algorithm = hd.AlgorithmIdentificationSequence(
            name=f"cervrt {self.model_arch}", family=codes.cid7162.ArtificialIntelligence, version=__version__,
            source="cervrt", parameters={"model_sha256": self.model_sha256 or "unknown"})
        out = []
        for number, k in enumerate(classes, start=1):
            name = self.class_names[k]
            category = codes.SCT.Tissue if number == 1 and k == 1 else codes.SCT.MorphologicallyAbnormalStructure
            prop = hd.sr.CodedConcept(value=name.replace(" ", "").upper()[:16], scheme_designator=_PRIVATE_SCHEME,
                                      meaning=name)
            out.append(hd.seg.SegmentDescription(
                segment_number=number, segment_label=name, segmented_property_category=category,
                segmented_property_type=prop, algorithm_type="AUTOMATIC", algorithm_identification=algorithm,
                display_color=hd.color.CIELabColor.from_rgb(*self._colours[k])))
        return out

    def _source(self) -> Any:
        if self.source_datasets:
            return self.source_datasets[0]
        return _standalone_source(self._pydicom, self.level0_size, self.mpp / self.downsample if self.mpp else None)

    def _write_levels(self, mask: np.memmap, out: Path) -> None:
        classes = [k for k in range(1, len(self.class_names)) if self._present[k]]
        lut = np.zeros(256, np.uint8)
        for number, k in enumerate(classes, start=1):
            lut[k] = number
        source = self._source()
        spacing = [float(v) for v in source.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]
        thickness = source.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].get("SliceThickness")
        series_uid, pyramid_uid = self._hd.UID(), self._hd.UID()
        descriptions = self._descriptions(classes) if classes else None
        seg_type = self._segment_type()
        ts = self._transfer_syntax()
        for level, f in enumerate(self.factors):
            labels = _level(mask, f, lut)
            if descriptions is None:  # nothing found: an empty SEG is not allowed; one empty normal segment
                descriptions = self._descriptions([1])
            measures = self._hd.PixelMeasuresSequence(
                pixel_spacing=(_ds(spacing[0] * self.downsample * f), _ds(spacing[1] * self.downsample * f)),
                slice_thickness=thickness)
            seg = self._hd.seg.Segmentation(
                source_images=[_centred(source, (self.downsample * f - 1) / 2)],
                pixel_array=labels,  # segment numbers: a label image, which both segmentation types take
                segmentation_type=seg_type, segment_descriptions=descriptions, series_instance_uid=series_uid,
                series_number=900, sop_instance_uid=self._hd.UID(), instance_number=level + 1,
                manufacturer="cervrt", manufacturer_model_name=f"cervrt {self.model_arch}",
                software_versions=__version__, device_serial_number="none", transfer_syntax_uid=ts,
                pixel_measures=measures, tile_pixel_array=True, tile_size=(self.tile, self.tile),
                pyramid_uid=pyramid_uid, pyramid_label="cervrt segmentation", series_description="cervrt segmentation",
                omit_empty_frames=True, content_label="CERVRT", use_extended_offset_table=ts != str(
                    self._pydicom.uid.ExplicitVRLittleEndian))
            seg.save_as(out / f"level-{level}.dcm")
            del seg, labels


def _level(mask: np.ndarray, f: int, lut: np.ndarray) -> np.ndarray:
    """Segment numbers of the level subsampled by ``f``: one uint8 array, filled 1024 rows at a time from the
    row file (a whole-array lookup would make an index array 8 times the level's size)."""
    out = np.empty((-(-mask.shape[0] // f), -(-mask.shape[1] // f)), np.uint8)
    for r in range(0, out.shape[0], 1024):
        out[r : r + 1024] = lut[mask[r * f : (r + 1024) * f : f, ::f]]
    return out


def _ds(value: float) -> float:
    """A float that fits a DICOM decimal string (16 characters): 10 significant digits."""
    return float(f"{value:.10g}")


def _centred(source: Any, shift: float) -> Any:
    """The source with its total pixel matrix origin moved ``shift`` source pixels along rows and columns.

    DICOM places a pixel at its centre; a SEG pixel covering F x F source pixels is centred (F - 1) / 2
    source pixels past the centre of the first one it covers. highdicom starts a derived image where its
    source starts, so it is handed a shallow copy whose origin is moved (same UIDs, same frame of reference).
    """
    if shift == 0:
        return source
    import copy

    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    row_sp, col_sp = (float(v) for v in source.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing)
    r = [float(v) for v in source.ImageOrientationSlide]
    old = source.TotalPixelMatrixOriginSequence[0]
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = _ds(float(old.XOffsetInSlideCoordinateSystem)
                                                + shift * (col_sp * r[0] + row_sp * r[3]))
    origin.YOffsetInSlideCoordinateSystem = _ds(float(old.YOffsetInSlideCoordinateSystem)
                                                + shift * (col_sp * r[1] + row_sp * r[4]))
    if "ZOffsetInSlideCoordinateSystem" in old:
        origin.ZOffsetInSlideCoordinateSystem = old.ZOffsetInSlideCoordinateSystem
    moved = Dataset()
    for element in source:  # a new element dict; a pydicom shallow copy would share (and change) the source's
        moved[element.tag] = element
    if hasattr(source, "file_meta"):
        moved.file_meta = copy.copy(source.file_meta)
    del moved.TotalPixelMatrixOriginSequence  # setting it in place would change the shared element
    moved.TotalPixelMatrixOriginSequence = DicomSequence([origin])
    return moved


def _standalone_source(pydicom: Any, level0_size: tuple[int, int], level0_mpp: float | None) -> Any:
    """A VL WSI source description of a non-DICOM slide (never written): its level-0 geometry, new UIDs."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    uid = pydicom.uid.generate_uid
    now = datetime.datetime.now()
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = uid(), uid(), uid()
    ds.FrameOfReferenceUID = uid()
    ds.Modality = "SM"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", "", "", ""
    ds.StudyDate, ds.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", ""
    ds.Rows = ds.Columns = _TILE
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = int(level0_size[0]), int(level0_size[1])
    ds.ImageOrientationSlide = [0.0, -1.0, 0.0, -1.0, 0.0, 0.0]
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = 0.0, 0.0
    ds.TotalPixelMatrixOriginSequence = DicomSequence([origin])
    spacing = _ds((level0_mpp or 1.0) / 1000.0)
    measures = Dataset()
    measures.PixelSpacing = [spacing, spacing]
    measures.SliceThickness = 0.0
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.ContainerIdentifier = "cervrt"
    ds.SpecimenDescriptionSequence = DicomSequence()
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 3, "RGB", 8
    ds.ImageType = ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.NumberOfFrames = 1
    return ds


def _replace_dir(tmp: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f"{target.name}.old-{secrets.token_hex(4)}")
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError as exc:
        if old is not None:
            os.replace(old, target)
        raise CervrtError(f"cannot rename the DICOM SEG into {target}: {exc.strerror}") from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
