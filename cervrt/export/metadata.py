"""Self-describing artifacts: the ``cervrt`` JSON inside an ONNX file and beside a TensorRT plan.

An exported ONNX model carries one ``metadata_props`` entry, key ``cervrt``, whose value is a JSON
object with (``format`` ``cervrt.onnx``, ``format_version`` 1):

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
plus ``tensorrt_version``, ``gpu_name``, ``compute_capability``, ``profile`` and ``build_route``.
``read_metadata`` is what the runtime configures itself from; it needs onnx only (no torch).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cervrt.errors import CervrtError

__all__ = [
    "METADATA_KEY",
    "ONNX_FORMAT",
    "PLAN_FORMAT",
    "REQUIRED_KEYS",
    "attach_metadata",
    "graph_io",
    "metadata_from_model",
    "onnx_info",
    "plan_info",
    "read_metadata",
    "read_plan_metadata",
]

METADATA_KEY = "cervrt"
ONNX_FORMAT = "cervrt.onnx"
PLAN_FORMAT = "cervrt.tensorrt"
FORMAT_VERSION = 1
#: Keys a reader can rely on.
REQUIRED_KEYS = ("arch", "arch_kwargs", "class_names", "palette", "mean", "std", "mpp", "patch_size",
                 "precision", "opset", "input", "outputs")
_INFO_KEYS = ("arch", "arch_kwargs", "params", "macs_384", "macs_patch", "patch_size", "mpp", "precision", "opset",
              "mean", "std", "palette", "io_dtype", "fp32_ops", "fp32_pooled_path", "source_sha256", "cervrt_version",
              "torch_version", "onnx_version")


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


def attach_metadata(model: Any, metadata: dict[str, Any]) -> None:
    """Store ``metadata`` as the model's ``cervrt`` metadata entry (replacing an earlier one)."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for key, value in [*kept, (METADATA_KEY, json.dumps(metadata, sort_keys=True))]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _validated(metadata: Any, source: str) -> dict[str, Any]:
    if not isinstance(metadata, dict):
        raise CervrtError(f"{source}: the cervrt metadata is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in metadata]
    if missing:
        raise CervrtError(f"{source}: the cervrt metadata lacks {', '.join(missing)}; export it again with cervrt")
    return metadata


def metadata_from_model(model: Any, source: str = "the model") -> dict[str, Any]:
    """The ``cervrt`` metadata of a loaded ONNX model; CervrtError if there is none."""
    values = [p.value for p in model.metadata_props if p.key == METADATA_KEY]
    if not values:
        raise CervrtError(f"{source} has no cervrt metadata: export it with `cervrt export CHECKPOINT`")
    try:
        return _validated(json.loads(values[-1]), source)
    except json.JSONDecodeError:
        raise CervrtError(f"{source}: its cervrt metadata is not valid JSON; export it again") from None


def _load_onnx(path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise CervrtError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        return onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise CervrtError(f"{path} is not a readable ONNX file (truncated or corrupt?): {type(exc).__name__}") from None


def read_metadata(onnx_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``cervrt`` metadata of an ONNX file; CervrtError for a missing, unreadable or foreign file."""
    path = Path(onnx_path)
    return metadata_from_model(_load_onnx(path), str(path))


def read_plan_metadata(plan_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata written beside a TensorRT plan (``X.plan`` -> ``X.plan.json``)."""
    plan = Path(plan_path)
    sidecar = plan.with_name(plan.name + ".json")
    if not sidecar.is_file():
        raise CervrtError(f"{sidecar} does not exist: a cervrt engine is described by the .json beside it; "
                          "build the engine with `cervrt export CHECKPOINT --engine PATH.plan`")
    try:
        metadata = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CervrtError(f"{sidecar} is not valid JSON (truncated?): build the engine again") from None
    if not isinstance(metadata, dict) or metadata.get("format") != PLAN_FORMAT:
        raise CervrtError(f"{sidecar} is not a cervrt engine description (no '{PLAN_FORMAT}' format marker)")
    return _validated(metadata, str(sidecar))


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
        raise CervrtError(f"{path} does not exist (only its .json description does): build the engine again")
    info = _common_info("tensorrt", path, metadata)
    info.update({k: metadata.get(k) for k in ("inputs", "outputs", "tensorrt_version", "gpu_name",
                                              "compute_capability", "profile", "build_route", "workspace_gb")})
    return info
