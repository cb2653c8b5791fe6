"""Typed settings of ``cervrt bench``: what to measure and how hard (full or ``--quick``).

``BenchConfig`` is what the command line turns its options into; ``BenchSettings`` holds the
effort knobs (warm-up and timed repeats, the synthetic slides), ``FULL`` and ``QUICK`` the two sets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cervrt.errors import CervrtError

__all__ = ["FULL", "FULL_MODEL", "MODEL_SUFFIXES", "QUICK", "QUICK_MODEL", "BenchConfig", "BenchSettings",
           "ModelSettings", "parse_batch_sizes"]

#: Artifact suffixes the benchmark accepts (those ``cervrt.engines.open_engine`` opens).
MODEL_SUFFIXES = (".pt", ".pth", ".onnx", ".plan")
_MAX_BATCH = 1024


@dataclass(frozen=True)
class ModelSettings:
    """How the benchmark's own model is trained: synthetic regions, patch, stride, epochs and a time budget."""

    regions: int
    region_size: int
    patch_size: int
    stride: int
    batch_size: int
    epochs: int
    minutes: float
    calibration_patches: int = 32
    seed: int = 0


#: The demo's sizes (``cervrt.demo.DEMO_SETTINGS``): about two minutes of training on a 2-core CPU.
FULL_MODEL = ModelSettings(regions=10, region_size=512, patch_size=128, stride=64, batch_size=8, epochs=3, minutes=2.0)
#: ``--quick``: 8 regions of 256 px, 64 px patches, at most 2 epochs / 1 minute, INT8 calibrated on 16 patches.
QUICK_MODEL = ModelSettings(regions=8, region_size=256, patch_size=64, stride=32, batch_size=8, epochs=2, minutes=1.0,
                            calibration_patches=16)


@dataclass(frozen=True)
class BenchSettings:
    """How much work one benchmark does.

    ``warmup`` untimed and ``repeats`` timed engine runs per batch size; ``slides`` synthetic slides
    of ``slide_size`` px (the test set with ground truth; every one also runs end to end, timed per
    stage); ``seed`` fixes the slides and the timing input; ``model``: how the benchmark's own model is
    trained when no ``--models`` are given (``cervrt.bench.trained``).
    """

    name: str
    warmup: int
    repeats: int
    slides: int
    slide_size: tuple[int, int]
    seed: int = 0
    model: ModelSettings = FULL_MODEL


FULL = BenchSettings("full", warmup=2, repeats=10, slides=2, slide_size=(1600, 1600), model=FULL_MODEL)
#: ``--quick``: 1 warm-up and 3 timed runs per batch size (not 2 and 10), one 640x640 test slide (16 windows of
#: 400 px, not two slides of 1600x1600) and, without --models, a smaller synthetic training (``QUICK_MODEL``).
#: The models and batch sizes stay those asked for.
QUICK = BenchSettings("quick", warmup=1, repeats=3, slides=1, slide_size=(640, 640), model=QUICK_MODEL)


def parse_batch_sizes(text: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """``"1,8"`` -> (1, 8): positive integers, duplicates removed, in the order given."""
    if isinstance(text, (tuple, list)):
        items = [str(v) for v in text]
    else:
        items = [part.strip() for part in str(text).split(",")]
    try:
        sizes = [int(item) for item in items]
    except ValueError:
        raise CervrtError(f"batch_sizes takes comma-separated positive integers such as 1,8, got {text!r}") from None
    if not sizes or any(not 1 <= s <= _MAX_BATCH for s in sizes):
        raise CervrtError(f"batch_sizes takes integers from 1 to {_MAX_BATCH} such as 1,8, got {text!r}")
    return tuple(dict.fromkeys(sizes))


def _check_model(path: Path) -> Path:
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise CervrtError(f"cannot benchmark {path}: expected a file ending in {', '.join(MODEL_SUFFIXES)}")
    if not path.is_file():
        raise CervrtError(f"model {path} does not exist" if not path.exists() else f"model {path} is not a file")
    return path


@dataclass(frozen=True)
class BenchConfig:
    """One ``cervrt bench`` run.

    ``models`` are artifact paths (empty: train a short synthetic HSP-Net ResNet-34, or reuse it, and
    export it to FP32, FP16 and INT8 ONNX, see ``cervrt.bench.trained``); ``batch_sizes`` the timed
    batch sizes; ``out`` the report directory; ``device`` what the engines run on ("auto", "cpu",
    "cuda[:N]"); ``backend`` which backend runs the ``.onnx`` models ("auto": ONNX Runtime,
    "onnxruntime", "openvino").
    """

    out: Path
    models: tuple[Path, ...] = ()
    batch_sizes: tuple[int, ...] = (1, 8)
    quick: bool = False
    device: str = "auto"
    settings: BenchSettings = field(default=FULL)
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.out is None:
            raise CervrtError("a benchmark needs an output directory (out) for its report")
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "models", tuple(_check_model(Path(p)) for p in self.models))
        object.__setattr__(self, "batch_sizes", parse_batch_sizes(self.batch_sizes))
        if self.quick and self.settings is FULL:
            object.__setattr__(self, "settings", QUICK)
        if self.out.exists() and not self.out.is_dir():
            raise CervrtError(f"the report directory {self.out} exists and is not a directory")
        if self.out.exists() and not os.access(self.out, os.W_OK):
            raise CervrtError(f"the report directory {self.out} is not writable")
