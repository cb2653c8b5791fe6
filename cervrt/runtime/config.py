"""``PredictorConfig``: how a Predictor tiles, filters, fuses and where it runs, in one frozen dataclass.

    config = PredictorConfig(batch_size=16, stride=100, blend="gaussian", tissue_threshold=0.1)
    with Predictor("hspnet.onnx", config) as predictor: ...
    Predictor("hspnet.onnx", config, stride=50)          # keyword overrides on top of a config
    Predictor("hspnet.onnx", batch_size=16, stride=100)   # or keywords alone, as before

Strings are accepted for the enums (``blend="mean"``, ``fusion="c"``) and turned into them; a bad
value raises a one-line InputError (a CervrtError) that names the setting and its valid values.
``stride=None`` means a quarter of the model's patch: ``resolve(patch)`` fills it in once the model
is known and checks it against the patch. The CLI derives its defaults and choices from ``PredictorConfig()``,
``Blend`` and ``Fusion`` (no second copy of them). What a call writes (mask format, GeoJSON) is an
argument of ``predict_slide``, not part of this config.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any

from cervrt.errors import InputError
from cervrt.runtime.tiling import BlendMode, check_tiling

__all__ = ["Blend", "Fusion", "PredictorConfig", "default_stride"]

#: How overlapping windows are blended (the tiling module's enum, re-exported under the config's name).
Blend = BlendMode


class Fusion(str, enum.Enum):
    """Where windows are gathered and fused: ``auto`` (the GPU for an engine that keeps its outputs on a
    CUDA device, else the C extension, else numpy), ``c``, ``numpy`` or ``cuda`` (the GPU, or an error)."""

    AUTO = "auto"
    C = "c"
    NUMPY = "numpy"
    CUDA = "cuda"

    @classmethod
    def parse(cls, value: str | Fusion) -> Fusion:
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise InputError(f"unknown fusion {value!r}: choose one of {valid}") from None


def default_stride(patch: int) -> int:
    """The stride used when none is given: a quarter of the patch (75% overlap, the papers' 400/100)."""
    return max(int(patch) // 4, 1)


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(float(value)):
        raise InputError(f"{what} must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class PredictorConfig:
    """The Predictor's settings; every field checked on construction.

    ``device``: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (what the engine's backend allows);
    ``batch_size``: windows per engine call; ``stride``: pixels between windows (None: a quarter of the
    model's patch); ``blend``: ``Blend.GAUSSIAN`` or ``Blend.MEAN``; ``tissue_threshold``: windows whose
    tissue share is under it are not run (0 runs every window); ``fusion``: see ``Fusion``; ``mpp``:
    the microns per pixel of slides without (or with wrong) resolution metadata, None to trust the file;
    ``backend``: which backend runs the model's format (``"auto"``: ONNX Runtime for ``.onnx``;
    ``"openvino"``); ``bf16``: BF16 inference precision (OpenVINO on a CPU with AVX-512 BF16 or AMX).
    """

    device: str = "auto"
    batch_size: int = 8
    stride: int | None = None
    blend: Blend = Blend.GAUSSIAN
    tissue_threshold: float = 0.1
    fusion: Fusion = Fusion.AUTO
    mpp: float | None = None
    backend: str = "auto"
    bf16: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not self.device.strip():
            raise InputError(f"device must be a name such as 'auto', 'cpu' or 'cuda:0', got {self.device!r}")
        _positive_int(self.batch_size, "batch_size (windows per engine call)")
        if self.stride is not None:
            _positive_int(self.stride, "stride (pixels between windows)")
        threshold = _number(self.tissue_threshold, "tissue_threshold")
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"tissue_threshold must be between 0 and 1, got {self.tissue_threshold}")
        mpp = None
        if self.mpp is not None:
            mpp = _number(self.mpp, "mpp")
            if not mpp > 0:
                raise InputError(f"mpp must be positive microns per pixel, got {self.mpp}")
        self._check_backend()
        object.__setattr__(self, "blend", Blend.parse(self.blend))
        object.__setattr__(self, "fusion", Fusion.parse(self.fusion))
        object.__setattr__(self, "tissue_threshold", threshold)
        object.__setattr__(self, "mpp", mpp)

    def _check_backend(self) -> None:
        if not isinstance(self.backend, str) or not self.backend.strip():
            raise InputError(f"backend must be a name such as 'auto', 'onnxruntime' or 'openvino', "
                             f"got {self.backend!r}")
        if not isinstance(self.bf16, bool):
            raise InputError(f"bf16 must be True or False, got {self.bf16!r}")
        if self.bf16 and self.backend != "openvino":
            raise InputError("bf16 inference runs on OpenVINO's CPU plugin: add --backend openvino "
                             "(backend='openvino'), or drop --bf16")

    def engine_options(self) -> dict[str, Any]:
        """Keyword options for the engine's constructor (``open_engine(..., options=)``): ``bf16`` when asked."""
        return {"bf16": True} if self.bf16 else {}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The settings' names, in order (what ``replace`` and the Predictor's keywords accept)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> PredictorConfig:
        """A copy with ``changes`` applied (and checked); an unknown name raises InputError listing the valid ones."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise InputError(f"unknown Predictor setting {unknown[0]!r}: choose from {', '.join(self.field_names())}")
        return dataclasses.replace(self, **changes)

    def resolve(self, patch: int) -> PredictorConfig:
        """This config for a model of ``patch`` pixels: the stride filled in and checked (1 <= stride <= patch)."""
        stride = default_stride(patch) if self.stride is None else self.stride
        check_tiling(int(patch), stride)
        return self if stride == self.stride else dataclasses.replace(self, stride=stride)

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (enums by their value)."""
        return {name: getattr(value, "value", value) for name, value in dataclasses.asdict(self).items()}
