"""What an export is asked to do: typed, validated settings built before anything is read or written.

``ExportConfig`` names the checkpoint, the ONNX file to write, its precision and opset, and an optional
``EngineConfig`` for a TensorRT plan with its batch profile (``BatchProfile.parse("1:8:32")``). Every
check here is pure Python (no torch, onnx or tensorrt), so that a bad option fails in milliseconds with
one sentence that says what to type instead, and before any file exists.
"""

from __future__ import annotations

import enum
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cervrt.errors import CervrtError
from cervrt.export.calibration import DEFAULT_CALIBRATION_PATCHES

__all__ = [
    "DEFAULT_OPSET",
    "SUPPORTED_OPSETS",
    "BatchProfile",
    "EngineConfig",
    "ExportConfig",
    "Precision",
    "default_onnx_path",
    "timing_cache_path",
]

#: Opsets the torch.export-based exporter writes and ONNX Runtime / TensorRT 10 read (18 is its floor).
SUPPORTED_OPSETS = range(18, 25)
#: The default: the oldest supported opset, read by every TensorRT 10.x parser.
DEFAULT_OPSET = 18

_BATCH = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*:\s*(\d+)\s*$")


class Precision(str, enum.Enum):
    """Numeric precision of an exported graph or engine."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    @classmethod
    def parse(cls, value: str | Precision) -> Precision:
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise CervrtError(f"unknown precision {value!r}: choose one of {valid}") from None


@dataclass(frozen=True)
class BatchProfile:
    """A TensorRT optimisation profile's batch sizes: 1 <= min <= opt <= max."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        values = (self.min, self.opt, self.max)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values) or not (
            1 <= self.min <= self.opt <= self.max
        ):
            raise CervrtError(f"a batch profile needs 1 <= MIN <= OPT <= MAX, got {self.min}:{self.opt}:{self.max}")

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """``"MIN:OPT:MAX"`` (e.g. ``"1:8:32"``) -> BatchProfile; anything else raises CervrtError."""
        found = _BATCH.match(text) if isinstance(text, str) else None
        hint = "--batch must be MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, e.g. 1:8:32"
        if not found:
            raise CervrtError(f"{hint}; got {text!r}")
        low, opt, high = (int(g) for g in found.groups())
        if not 1 <= low <= opt <= high:
            raise CervrtError(f"{hint}; got {text!r}")
        return cls(low, opt, high)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


@dataclass(frozen=True)
class EngineConfig:
    """A TensorRT plan to build from the exported ONNX: where, which batch profile, how much workspace."""

    path: Path
    batch: BatchProfile = field(default_factory=BatchProfile)
    workspace_gb: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.path.suffix.lower() != ".plan":
            raise CervrtError(f"the engine file must end in .plan (cervrt info reads it so), got {self.path}")
        if not isinstance(self.batch, BatchProfile):
            raise CervrtError(f"batch must be a BatchProfile (use BatchProfile.parse('1:8:32')), got {self.batch!r}")
        if self.workspace_gb is not None and not (math.isfinite(self.workspace_gb) and self.workspace_gb > 0):
            raise CervrtError(f"--workspace must be a positive number of GB, got {self.workspace_gb}")

    @property
    def json_path(self) -> Path:
        """``hspnet.plan`` -> ``hspnet.plan.json``: the metadata written beside the plan."""
        return self.path.with_name(self.path.name + ".json")


def default_onnx_path(checkpoint: str | os.PathLike[str], precision: Precision | str = Precision.FP32) -> Path:
    """``run/hspnet.pt`` -> ``run/hspnet.onnx`` (FP32), ``run/hspnet.fp16.onnx`` (FP16) or ``run/hspnet.int8.onnx``."""
    checkpoint = Path(checkpoint)
    precision = Precision.parse(precision)
    suffix = ".onnx" if precision is Precision.FP32 else f".{precision.value}.onnx"
    return checkpoint.with_name(checkpoint.stem + suffix)


def timing_cache_path(plan: str | os.PathLike[str]) -> Path:
    """``hspnet.plan`` -> ``hspnet.timing.cache``: TensorRT's layer timings, reused by the next build."""
    return Path(plan).with_suffix(".timing.cache")


def _check_onnx_suffix(path: Path, what: str) -> None:
    if path.suffix.lower() != ".onnx":
        raise CervrtError(f"{what} must end in .onnx, got {path}")


@dataclass(frozen=True)
class ExportConfig:
    """One export: checkpoint -> ONNX at ``precision`` (and optionally a TensorRT plan).

    ``output`` defaults to the checkpoint's name with ``.onnx`` (FP32) or ``.fp16.onnx`` (FP16) beside
    it. With FP16, ``fp32_output`` also keeps the FP32 graph the FP16 one is checked against (the demo
    and the benchmark want both from one export). ``fp16_io`` makes the FP16 graph's input and outputs
    float16 too (they stay float32 by default).
    """

    checkpoint: Path
    output: Path | None = None
    precision: Precision = Precision.FP32
    fp16_io: bool = False
    opset: int = DEFAULT_OPSET
    fp32_output: Path | None = None
    engine: EngineConfig | None = None
    calibration: tuple[Path, ...] = ()
    calibration_patches: int = DEFAULT_CALIBRATION_PATCHES

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        object.__setattr__(self, "precision", Precision.parse(self.precision))
        output = Path(self.output) if self.output is not None else default_onnx_path(self.checkpoint, self.precision)
        object.__setattr__(self, "output", output)
        _check_onnx_suffix(output, "-o/--output")
        if self.fp32_output is not None:
            object.__setattr__(self, "fp32_output", Path(self.fp32_output))
            self._check_fp32_output()
        object.__setattr__(self, "calibration", tuple(Path(p) for p in self.calibration))
        self._check_options()
        self._check_int8()

    def _check_fp32_output(self) -> None:
        _check_onnx_suffix(self.fp32_output, "fp32_output")
        if self.precision is Precision.FP32:
            raise CervrtError("fp32_output is only for FP16 and INT8 exports (an FP32 export writes its graph to "
                              "output)")
        if self.fp32_output.resolve() == self.output.resolve():
            raise CervrtError(f"fp32_output and output are the same file: {self.output}")

    def _check_options(self) -> None:
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or self.opset not in SUPPORTED_OPSETS:
            raise CervrtError(
                f"--opset {self.opset} is not supported: choose {SUPPORTED_OPSETS.start}.."
                f"{SUPPORTED_OPSETS.stop - 1} (the torch.export-based exporter writes opset 18 or newer)"
            )
        if self.fp16_io and self.precision is not Precision.FP16:
            raise CervrtError("--fp16-io needs --precision fp16")
        if self.engine is not None and not isinstance(self.engine, EngineConfig):
            raise CervrtError(f"engine must be an EngineConfig, got {self.engine!r}")

    def _check_int8(self) -> None:
        """INT8: calibration images, a positive patch count, no TensorRT plan (see cervrt.export.int8)."""
        count = self.calibration_patches
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise CervrtError(f"--calibration-patches must be a positive number of patches, got {count!r}")
        if self.precision is not Precision.INT8:
            if self.calibration:
                raise CervrtError("--calibration is for --precision int8 (FP32 and FP16 exports need no calibration)")
            return
        if self.engine is not None:
            raise CervrtError("TensorRT INT8 is not part of cervrt: --precision int8 writes an ONNX file for the CPU "
                              "backends; build the .plan from an fp32 or fp16 export")
        if not self.calibration:
            raise CervrtError("--precision int8 needs calibration images: pass --calibration PATH [PATH...] with H&E "
                              "images, a dataset's images/ directory or slides (cervrt never calibrates a model on "
                              "synthetic tissue)")

    @classmethod
    def from_options(cls, checkpoint: str, *, output: str | None = None, precision: str = "fp32",
                     fp16_io: bool = False, opset: int = DEFAULT_OPSET, engine: str | None = None,
                     batch: str | None = None, workspace: float | None = None,
                     calibration: tuple[str, ...] = (), calibration_patches: int | None = None) -> ExportConfig:
        """Build the config from command-line style values (``batch`` as ``"MIN:OPT:MAX"`` text)."""
        if engine is None and (batch is not None or workspace is not None):
            raise CervrtError("--batch and --workspace configure the TensorRT engine: add --engine PATH.plan")
        engine_config = None
        if engine is not None:
            profile = BatchProfile.parse(batch) if batch is not None else BatchProfile()
            engine_config = EngineConfig(Path(engine), profile, workspace)
        patches = DEFAULT_CALIBRATION_PATCHES if calibration_patches is None else calibration_patches
        return cls(Path(checkpoint), None if output is None else Path(output), Precision.parse(precision),
                   fp16_io=fp16_io, opset=opset, engine=engine_config, calibration=tuple(map(Path, calibration)),
                   calibration_patches=patches)

    @property
    def destinations(self) -> tuple[Path, ...]:
        """Every file this export may write (the checks make sure their directories take writes)."""
        paths = [self.output]
        if self.fp32_output is not None:
            paths.append(self.fp32_output)
        if self.engine is not None:
            paths += [self.engine.path, self.engine.json_path, timing_cache_path(self.engine.path)]
        return tuple(paths)
