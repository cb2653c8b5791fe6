"""A recording stand-in for the ``tensorrt`` module: only the documented calls cervrt makes, nothing more.

It checks that cervrt's build code calls the TensorRT Python API with the documented names and
argument shapes for each version route (for example: on "11.x" the fake has no ``BuilderFlag.FP16``,
so touching it fails the test). It cannot tell whether TensorRT itself would accept the network:
that is what the ``tensorrt``-marked test on a GPU machine is for.
"""

from __future__ import annotations

import enum
import importlib.machinery
import types
from typing import Any


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def add(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def args(self, name: str) -> list[tuple[Any, ...]]:
        return [args for call, args in self.calls if call == name]


def make_fake_tensorrt(version: str, *, parse_ok: bool = True, build_ok: bool = True,
                       layers: tuple[str, ...] = ("CONVOLUTION", "SOFTMAX", "REDUCE")) -> types.ModuleType:
    """A fake ``tensorrt`` module of ``version``; ``module.record`` lists every call made on it."""
    major, minor = (int(part) for part in version.split(".")[:2])
    weak_typing = (major, minor) < (10, 12)
    record = _Recorder()
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # torch._dynamo probes sys.modules' specs
    trt.__version__ = version
    trt.record = record
    trt.float32 = "float32"

    # 10.x: kEXPLICIT_BATCH = 0, kSTRONGLY_TYPED = 1; 11.x: kSTRONGLY_TYPED = 0 (deprecated, ignored)
    flag_names = ["STRONGLY_TYPED", "PREFER_AOT"] if major >= 11 else ["EXPLICIT_BATCH", "STRONGLY_TYPED"]
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", flag_names, start=0)
    builder_flags = ["DEBUG", "REFIT"] if major >= 11 else ["FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS"]
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags, start=0)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM"], start=0)
    trt.LayerType = enum.IntEnum("LayerType", ["CONVOLUTION", "SOFTMAX", "REDUCE", "RESIZE"], start=0)

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            record.add("Logger", severity)

    class Layer:
        def __init__(self, kind: str) -> None:
            self.type = trt.LayerType[kind]
            self.num_outputs = 1
            self._precision = None

        @property
        def precision(self) -> Any:
            return self._precision

        @precision.setter
        def precision(self, value: Any) -> None:
            if not weak_typing:
                raise AssertionError("layer precision is a weak-typing API: not for this version")
            record.add("layer.precision", self.type.name, value)

        def set_output_type(self, index: int, dtype: Any) -> None:
            record.add("layer.set_output_type", self.type.name, index, dtype)

    class Network:
        def __init__(self) -> None:
            self._layers = [Layer(kind) for kind in layers]

        @property
        def num_layers(self) -> int:
            return len(self._layers)

        def get_layer(self, index: int) -> Layer:
            return self._layers[index]

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> bytes:
            return b"CACHE:" + self.data

    class Profile:
        def set_shape(self, name: str, low: tuple, opt: tuple, high: tuple) -> None:
            record.add("profile.set_shape", name, low, opt, high)

    class Config:
        def __init__(self) -> None:
            self._cache: TimingCache | None = None

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            record.add("config.set_memory_pool_limit", pool, size)

        def set_flag(self, flag: Any) -> None:
            record.add("config.set_flag", trt.BuilderFlag(flag).name)

        def add_optimization_profile(self, profile: Profile) -> int:
            record.add("config.add_optimization_profile")
            return 0

        def create_timing_cache(self, data: bytes) -> TimingCache:
            record.add("config.create_timing_cache", bytes(data))
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            record.add("config.set_timing_cache", ignore_mismatch)
            self._cache = cache
            return not cache.data.startswith(b"STALE")

        def get_timing_cache(self) -> TimingCache:
            return self._cache

    class ParserError:
        def desc(self) -> str:
            return "unsupported operator FancyOp"

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            record.add("OnnxParser")

        def parse(self, model: bytes) -> bool:
            record.add("parser.parse", len(model))
            trt.parsed = bytes(model)
            return parse_ok

        @property
        def num_errors(self) -> int:
            return 0 if parse_ok else 1

        def get_error(self, index: int) -> ParserError:
            return ParserError()

    class Builder:
        def __init__(self, logger: Logger) -> None:
            record.add("Builder")

        def create_network(self, flags: int = 0) -> Network:
            record.add("builder.create_network", flags)
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            record.add("builder.build_serialized_network")
            return b"PLAN-BYTES" if build_ok else None

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    return trt
