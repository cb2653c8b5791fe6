"""Build a TensorRT engine (plan) from the exported ONNX. Written against the documented TensorRT Python
API (10.x and 11.x); no GPU on the machine this was written on, so it has not been executed here.

How FP16 is obtained depends on the TensorRT version (``build_recipe``, a pure function of the
version string):

- 10.0 - 10.11, *weak typing*: parse the FP32 ONNX and set ``BuilderFlag.FP16``; TensorRT then picks
  FP16 kernels where it likes. The Softmax and Reduce layers (probabilities, global average pooling)
  are asked to stay FP32 with ``layer.precision`` / ``set_output_type`` and
  ``BuilderFlag.PREFER_PRECISION_CONSTRAINTS``, matching what the FP16 ONNX keeps in FP32.
- 10.12 - 10.x: weak typing is deprecated. Parse the FP16 ONNX (where the precision of every tensor
  is written in the graph) into a network created with
  ``1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)``.
- 11.x: networks are always strongly typed; ``BuilderFlag.FP16`` and the other weak-typing APIs are
  removed and the STRONGLY_TYPED flag is deprecated and ignored, so the FP16 ONNX is parsed into
  ``create_network(0)``.

FP32 engines parse the FP32 ONNX (strongly typed from 10.12 on, for the same reason). Every build has
one optimisation profile for the input: batch MIN/OPT/MAX at the checkpoint's patch size, a timing
cache beside the plan (loaded when present and valid, saved after the build) and, when asked, a
workspace limit (``set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)``).

Before any work, ``require_tensorrt`` imports tensorrt and asks ``cervrt.cuda`` for a GPU, so that a
machine without either fails at once with one line and writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cervrt._io import atomic_path, optional_import
from cervrt.cuda import NoDeviceError, gpu_info
from cervrt.cuda.trt import shared_logger
from cervrt.errors import CervrtError
from cervrt.export.config import BatchProfile, EngineConfig, Precision, timing_cache_path

__all__ = [
    "STRONG_TYPING_ALWAYS",
    "WEAK_TYPING_DEPRECATED",
    "BuildRecipe",
    "TensorRTEnv",
    "build_engine",
    "build_recipe",
    "parse_version",
    "probe_gpu",
    "profile_shapes",
    "require_tensorrt",
]

#: The first TensorRT with weak typing (BuilderFlag.FP16) deprecated.
WEAK_TYPING_DEPRECATED = (10, 12)
#: The first TensorRT where every network is strongly typed.
STRONG_TYPING_ALWAYS = (11, 0)
_OLDEST = (10, 0)
_GIB = 1 << 30


@dataclass(frozen=True)
class TensorRTEnv:
    """The imported tensorrt module, its version and the GPU the engine is built for."""

    trt: Any
    version: str
    gpu_name: str
    compute_capability: str


@dataclass(frozen=True)
class BuildRecipe:
    """How to build an engine of some precision with some TensorRT version (see the module docstring)."""

    onnx_precision: Precision
    strongly_typed_flag: bool
    fp16_builder_flag: bool
    route: str


def parse_version(version: str) -> tuple[int, int]:
    """``"10.13.3.9"`` -> ``(10, 13)``; CervrtError for text that is not a version."""
    found = re.match(r"^\s*(\d+)\.(\d+)", str(version))
    if not found:
        raise CervrtError(f"cannot read the TensorRT version {version!r}")
    return int(found.group(1)), int(found.group(2))


def build_recipe(version: str, precision: Precision | str) -> BuildRecipe:
    """Which ONNX to parse, which network flag and whether BuilderFlag.FP16, for this TensorRT version."""
    precision = Precision.parse(precision)
    release = parse_version(version)
    if release < _OLDEST:
        raise CervrtError(f'TensorRT {version} is too old: cervrt needs 10.0 or newer (pip install "cervrt[tensorrt]")')
    fp16 = precision is Precision.FP16
    if release >= STRONG_TYPING_ALWAYS:
        return BuildRecipe(precision, False, False, "fp16-onnx-always-strongly-typed" if fp16 else "fp32-onnx")
    if release >= WEAK_TYPING_DEPRECATED:
        return BuildRecipe(precision, True, False, "fp16-onnx-strongly-typed" if fp16 else "fp32-onnx-strongly-typed")
    return BuildRecipe(Precision.FP32, False, fp16, "fp32-onnx-builder-flag-fp16" if fp16 else "fp32-onnx")


def profile_shapes(batch: BatchProfile, patch_size: int) -> dict[str, list[int]]:
    """The min/opt/max input shapes (N, 3, patch, patch) of the engine's optimisation profile."""
    return {name: [n, 3, patch_size, patch_size] for name, n in
            (("min", batch.min), ("opt", batch.opt), ("max", batch.max))}


def probe_gpu(device: int = 0) -> tuple[str, str]:
    """(name, compute capability) of a CUDA device (``cervrt.cuda.gpu_info``); CervrtError naming why there is none."""
    hint = "TensorRT builds an engine on the GPU model that will run it: run this export on that machine"
    try:
        gpu = gpu_info(device, extra="tensorrt")
    except NoDeviceError as exc:
        raise CervrtError(f"no CUDA GPU is available ({exc.reason}): {hint}") from None
    return gpu.name, gpu.capability


def require_tensorrt() -> TensorRTEnv:
    """Import tensorrt (10 or newer) and find a GPU, or raise the one-line error that says what is missing."""
    trt = optional_import("tensorrt", "tensorrt")
    version = str(getattr(trt, "__version__", "0.0"))
    build_recipe(version, Precision.FP32)  # refuses TensorRT older than 10 before any work
    gpu_name, capability = probe_gpu()
    return TensorRTEnv(trt, version, gpu_name, capability)


# --- the build, in stages --------------------------------------------------------------------------


def _network(trt: Any, builder: Any, recipe: BuildRecipe) -> Any:
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if recipe.strongly_typed_flag else 0
    return builder.create_network(flags)


def _parse(trt: Any, network: Any, logger: Any, onnx_bytes: bytes) -> Any:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise CervrtError(f"TensorRT's ONNX parser refused the graph: {'; '.join(errors) or 'no details given'}")
    return parser  # keep it alive as long as the network (it owns the parsed weights)


def _pin_fp32_layers(trt: Any, network: Any) -> int:
    """Weak typing only: ask Softmax and Reduce layers to compute and output FP32."""
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in (trt.LayerType.SOFTMAX, trt.LayerType.REDUCE):
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            pinned += 1
    return pinned


def _configure(trt: Any, builder: Any, network: Any, recipe: BuildRecipe, engine: EngineConfig,
               input_name: str, patch_size: int) -> Any:
    config = builder.create_builder_config()
    if engine.workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(engine.workspace_gb * _GIB))
    if recipe.fp16_builder_flag:
        config.set_flag(trt.BuilderFlag.FP16)
        if _pin_fp32_layers(trt, network):
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    shapes = profile_shapes(engine.batch, patch_size)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
    config.add_optimization_profile(profile)
    return config


def _attach_timing_cache(config: Any, path: Path, echo: Callable[[str], None]) -> Any:
    """Load the timing cache at ``path`` when it exists and fits this TensorRT/GPU; else start empty."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, False):
        if data:
            echo(f"timing cache: reusing {path} ({len(data)} bytes)")
        return cache
    echo(f"timing cache: {path} does not fit this TensorRT/GPU, starting an empty one")
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    return cache


def _save_timing_cache(config: Any, path: Path) -> None:
    serialized = config.get_timing_cache().serialize()
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(serialized))


def build_engine(env: TensorRTEnv, onnx_bytes: bytes, recipe: BuildRecipe, engine: EngineConfig, input_name: str,
                 patch_size: int, echo: Callable[[str], None] = lambda _m: None) -> bytes:
    """Parse, configure and build: the serialised plan. Saves the timing cache beside ``engine.path``."""
    trt = env.trt
    logger = shared_logger(trt)  # TensorRT keeps one global logger: the one the runtimes use too
    builder = trt.Builder(logger)
    network = _network(trt, builder, recipe)
    parser = _parse(trt, network, logger, onnx_bytes)
    config = _configure(trt, builder, network, recipe, engine, input_name, patch_size)
    cache_path = timing_cache_path(engine.path)
    _attach_timing_cache(config, cache_path, echo)
    echo(f"building the TensorRT {env.version} engine ({recipe.route}) on {env.gpu_name}: this takes minutes")
    plan = builder.build_serialized_network(network, config)
    del parser
    if plan is None:
        raise CervrtError("TensorRT could not build the engine (its messages above say why); nothing was written")
    _save_timing_cache(config, cache_path)
    return bytes(plan)
