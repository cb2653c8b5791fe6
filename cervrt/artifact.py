"""Self-describing artifacts: typed metadata, the ``cervrt`` JSON inside an ONNX file and beside a TensorRT plan.

:class:`ArtifactMetadata` is the one description of a model artifact (checkpoint, ONNX file,
TensorRT plan). Its on-disk form (``to_dict``) is a JSON object; an exported ONNX model carries it
as one ``metadata_props`` entry, key ``cervrt`` (``format`` ``cervrt.onnx``, ``format_version`` 1):

- the model: ``arch``, ``arch_kwargs``, ``class_names``, ``palette``, ``has_classifier``, and
  ``gate_epsilon`` only for models with a classification gate (WSSS ``wsss_seg``: foreground channel k
  of a patch is zeroed when ``class_probs[k - 1] <= gate_epsilon``);
- its input: ``mean``, ``std`` (RGB, on 0..1 pixels: ``image = (rgb / 255 - mean) / std``, NCHW),
  ``mpp`` (microns per pixel it was trained at), ``patch_size``, ``size_multiple``;
- its cost: ``params``, ``macs_384``, ``macs_patch`` (multiply-accumulates per image);
- the graph: ``precision`` (fp32/fp16), ``io_dtype``, ``opset``, ``input`` and ``outputs`` (names),
  ``fp32_ops`` and ``fp32_pooled_path`` (for FP16: the operator types kept in float32 everywhere,
  and those kept in float32 on the pooled vectors only; see ``cervrt.export.fp16``);
- provenance: ``source_checkpoint``, ``source_sha256``, ``cervrt_version``, ``torch_version``,
  ``onnx_version`` and ``tools`` (exporter, simplifier, converter and runtime versions).

A TensorRT plan ``X.plan`` has the same object in ``X.plan.json`` (``format`` ``cervrt.tensorrt``)
plus ``tensorrt_version``, ``gpu_name``, ``compute_capability``, ``profile`` and ``build_route``
(kept in ``extra``: keys this class does not name travel through unchanged). ``read_metadata`` is
what the runtime configures itself from; it needs onnx only (no torch), and importing this module
needs neither (basics level: it imports only ``cervrt.errors`` and ``cervrt._io``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cervrt._io import nan_to_none, write_json
from cervrt.errors import ModelError

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEY",
    "NORMALIZATION",
    "ONNX_FORMAT",
    "PLAN_FORMAT",
    "REQUIRED_KEYS",
    "ArtifactMetadata",
    "attach_metadata",
    "graph_io",
    "metadata_from_model",
    "onnx_info",
    "plan_info",
    "plan_json_path",
    "read_artifact",
    "read_metadata",
    "read_plan_metadata",
    "write_plan_metadata",
]

METADATA_KEY = "cervrt"
ONNX_FORMAT = "cervrt.onnx"
PLAN_FORMAT = "cervrt.tensorrt"
FORMAT_VERSION = 1
NORMALIZATION = "image = (rgb / 255 - mean) / std, RGB, NCHW"
#: Keys a reader can rely on (always written, even when their value is None, e.g. a checkpoint's opset).
REQUIRED_KEYS = ("arch", "arch_kwargs", "class_names", "palette", "mean", "std", "mpp", "patch_size",
                 "precision", "opset", "input", "outputs")
_SEQUENCES = ("class_names", "palette", "mean", "std", "outputs", "fp32_ops", "fp32_pooled_path")
_INFO_KEYS = ("arch", "arch_kwargs", "params", "macs_384", "macs_patch", "patch_size", "mpp", "precision", "opset",
              "mean", "std", "palette", "io_dtype", "fp32_ops", "fp32_pooled_path", "source_sha256", "cervrt_version",
              "torch_version", "onnx_version")


def _plain(value: Any) -> Any:
    """Tuples back to lists, recursively (the JSON form)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _frozen(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return tuple(_frozen(v) for v in value)
    return value


@dataclass(frozen=True)
class ArtifactMetadata:
    """What a model artifact says about itself (see the module docstring for each key's meaning).

    The required keys are always written; an optional key whose value is None is left out of
    ``to_dict()``, and ``extra`` carries the keys of a richer description (a plan's build facts)
    unchanged, so ``from_dict(d).to_dict() == d`` for every file cervrt wrote.
    """

    arch: str
    arch_kwargs: Mapping[str, Any]
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mpp: float
    patch_size: int
    precision: str
    opset: int | None
    input: str
    outputs: tuple[Any, ...]
    format: str | None = None
    format_version: int | None = None
    has_classifier: bool | None = None
    gate_epsilon: float | None = None
    size_multiple: int | None = None
    params: int | None = None
    macs_384: int | None = None
    macs_patch: int | None = None
    io_dtype: str | None = None
    fp32_ops: tuple[str, ...] | None = None
    fp32_pooled_path: tuple[str, ...] | None = None
    normalization: str | None = None
    source_checkpoint: str | None = None
    source_sha256: str | None = None
    cervrt_version: str | None = None
    torch_version: str | None = None
    onnx_version: str | None = None
    tools: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _SEQUENCES:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _frozen(value))
        object.__setattr__(self, "arch_kwargs", dict(self.arch_kwargs))
        object.__setattr__(self, "extra", dict(self.extra))

    @classmethod
    def from_dict(cls, data: Any, source: str = "the artifact") -> ArtifactMetadata:
        """Parse the JSON form; CervrtError naming ``source`` and the missing keys."""
        if not isinstance(data, Mapping):
            raise ModelError(f"{source}: the cervrt metadata is not a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise ModelError(f"{source}: the cervrt metadata lacks {', '.join(missing)}; export it again with cervrt")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with the on-disk keys (lists, not tuples)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in REQUIRED_KEYS or value is not None:
                out[f.name] = _plain(value)
        out.update(self.extra)
        return out

    def replace(self, **changes: Any) -> ArtifactMetadata:
        """A copy with ``changes``; names this class does not know go into ``extra``."""
        names = {f.name for f in dataclasses.fields(self)}
        extra = {**self.extra, **{k: v for k, v in changes.items() if k not in names}}
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if k in names}, extra=extra)


def _as_dict(metadata: ArtifactMetadata | Mapping[str, Any]) -> dict[str, Any]:
    return metadata.to_dict() if isinstance(metadata, ArtifactMetadata) else dict(metadata)


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
            for d in value_info.type.tensor_type.shape.dim]


def _dtype(value_info: Any) -> str:
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name


def graph_io(model: Any) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs of an ONNX model: name, dtype and shape (symbolic axes as their names)."""
    initializers = {t.name for t in model.graph.initializer}

    def describe(values: Any) -> list[dict[str, Any]]:
        return [{"name": v.name, "dtype": _dtype(v), "shape": _dims(v)} for v in values if v.name not in initializers]

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def attach_metadata(model: Any, metadata: ArtifactMetadata | Mapping[str, Any]) -> None:
    """Store ``metadata`` as the model's ``cervrt`` metadata entry (replacing an earlier one)."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    entry_text = json.dumps(nan_to_none(_as_dict(metadata)), sort_keys=True, allow_nan=False)  # strict JSON
    for key, value in [*kept, (METADATA_KEY, entry_text)]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def metadata_from_model(model: Any, source: str = "the model") -> dict[str, Any]:
    """The ``cervrt`` metadata of a loaded ONNX model; CervrtError if there is none."""
    values = [p.value for p in model.metadata_props if p.key == METADATA_KEY]
    if not values:
        raise ModelError(f"{source} has no cervrt metadata: export it with `cervrt export CHECKPOINT`, or give "
                          "a model cervrt did not export its metadata with `cervrt adopt MODEL --classes ...`")
    try:
        data = json.loads(values[-1])
    except json.JSONDecodeError:
        raise ModelError(f"{source}: its cervrt metadata is not valid JSON; export it again") from None
    ArtifactMetadata.from_dict(data, source)
    return data


def _load_onnx(path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise ModelError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        return onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ModelError(f"{path} is not a readable ONNX file (truncated or corrupt?): {type(exc).__name__}") from None


def read_metadata(onnx_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``cervrt`` metadata of an ONNX file (JSON form); CervrtError for a missing, unreadable or foreign file."""
    path = Path(onnx_path)
    return metadata_from_model(_load_onnx(path), str(path))


def plan_json_path(plan_path: str | os.PathLike[str]) -> Path:
    """``X.plan`` -> ``X.plan.json``: where a plan's description lives."""
    plan = Path(plan_path)
    return plan.with_name(plan.name + ".json")


def read_plan_metadata(plan_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata written beside a TensorRT plan (``X.plan`` -> ``X.plan.json``), JSON form."""
    sidecar = plan_json_path(plan_path)
    if not sidecar.is_file():
        raise ModelError(f"{sidecar} does not exist: a cervrt engine is described by the .json beside it; "
                          "build the engine with `cervrt export CHECKPOINT --engine PATH.plan`")
    try:
        metadata = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"{sidecar} is not valid JSON (truncated?): build the engine again") from None
    if not isinstance(metadata, dict) or metadata.get("format") != PLAN_FORMAT:
        raise ModelError(f"{sidecar} is not a cervrt engine description (no '{PLAN_FORMAT}' format marker)")
    ArtifactMetadata.from_dict(metadata, str(sidecar))
    return metadata


def write_plan_metadata(plan_path: str | os.PathLike[str], metadata: ArtifactMetadata | Mapping[str, Any]) -> Path:
    """Write ``metadata`` (atomically) as the JSON beside plan ``plan_path``; returns that file."""
    sidecar = plan_json_path(plan_path)
    write_json(sidecar, _as_dict(metadata))
    return sidecar


def read_artifact(path: str | os.PathLike[str]) -> ArtifactMetadata:
    """The typed metadata of an ONNX file or a TensorRT plan (chosen by suffix)."""
    data = read_plan_metadata(path) if Path(path).suffix.lower() == ".plan" else read_metadata(path)
    return ArtifactMetadata.from_dict(data, str(path))


def _common_info(kind: str, path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {"kind": kind, "path": str(path)}
    info.update({k: metadata.get(k) for k in _INFO_KEYS})
    info["classes"] = list(metadata["class_names"])
    info["size_bytes"] = path.stat().st_size if path.exists() else None
    return info


def onnx_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``cervrt info X.onnx``: the metadata plus the graph's inputs and outputs with their shapes."""
    path = Path(path)
    model = _load_onnx(path)
    info = _common_info("onnx", path, metadata_from_model(model, str(path)))
    info.update(graph_io(model))
    return info


def plan_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``cervrt info X.plan``: what ``X.plan.json`` says, plus the engine's TensorRT build facts."""
    path = Path(path)
    metadata = read_plan_metadata(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist (only its .json description does): build the engine again")
    info = _common_info("tensorrt", path, metadata)
    info.update({k: metadata.get(k) for k in ("inputs", "outputs", "tensorrt_version", "gpu_name",
                                              "compute_capability", "profile", "build_route", "workspace_gb")})
    return info
