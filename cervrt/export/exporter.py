"""``export(config)``: checkpoint -> checked ONNX (FP32 and/or FP16) -> optional TensorRT plan.

Stages: check the destinations (and TensorRT plus a GPU when an engine is asked for) -> load the
checkpoint safely and rebuild the model -> trace, simplify and check the FP32 graph -> attach the
metadata -> parity against torch -> FP16 conversion and parity against FP32 -> engine. Every file
goes to a temporary name beside its target, is validated there (ONNX Runtime loads the bytes on
disk and the parity checks run on them) and only then renamed: a failed check, an error or Ctrl-C
leaves no file behind.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cervrt._io import atomic_path, ensure_writable_dir
from cervrt.artifact import ONNX_FORMAT, PLAN_FORMAT, ArtifactMetadata, attach_metadata, graph_io, write_plan_metadata
from cervrt.errors import CervrtError
from cervrt.export.config import ExportConfig, Precision, timing_cache_path

__all__ = ["ExportResult", "export"]

Echo = Callable[[str], None]


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and how it went.

    ``files`` and ``sizes`` (bytes) are keyed by role: ``fp32`` / ``fp16`` (ONNX), ``engine``,
    ``engine_json``, ``timing_cache``. ``seconds`` has ``load``, ``export`` (trace + simplify),
    ``fp16``, ``parity``, ``engine`` and ``total``. ``checks`` are the parity checks, in order.
    """

    onnx: Path
    precision: Precision
    files: dict[str, Path]
    sizes: dict[str, int]
    seconds: dict[str, float]
    checks: tuple[Any, ...]
    metadata: dict[str, Any] = field(repr=False)

    def check(self, candidate: str, sample: str) -> Any:
        """The parity check of ``candidate`` ("fp32"/"fp16") on ``sample`` ("random"/"tissue")."""
        for item in self.checks:
            if item.candidate.startswith(candidate) and item.sample == sample:
                return item
        raise KeyError(f"no {candidate} check on {sample} input")


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - since
        return now

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": time.perf_counter() - self._start}


def _check_destinations(config: ExportConfig) -> None:
    for path in config.destinations:
        ensure_writable_dir(path.parent if str(path.parent) else Path("."), create=False)
        if path.exists() and path.is_dir():
            raise CervrtError(f"{path} is a directory: name the file to write")
    if config.checkpoint.resolve() in {p.resolve() for p in config.destinations}:
        raise CervrtError(f"the output would overwrite the checkpoint {config.checkpoint}")


def _versions() -> dict[str, Any]:
    import onnx
    import onnxconverter_common
    import onnxruntime
    import onnxslim
    import torch

    from cervrt import __version__

    return {"cervrt_version": __version__, "torch_version": str(torch.__version__), "onnx_version": onnx.__version__,
            "tools": {"exporter": f"torch.onnx (dynamo) {torch.__version__}", "onnxslim": onnxslim.__version__,
                      "onnxconverter_common": onnxconverter_common.__version__,
                      "onnxruntime": onnxruntime.__version__}}


def _base_metadata(ckpt: dict[str, Any], model: Any, config: ExportConfig, sha256: str) -> ArtifactMetadata:
    from cervrt.export.onnx_export import INPUT_NAME
    from cervrt.models import describe_model

    return describe_model(ckpt, model, source_checkpoint=config.checkpoint.name, format=ONNX_FORMAT,
                          format_version=1, opset=config.opset, input=INPUT_NAME, source_sha256=sha256,
                          **_versions())


def _graph_metadata(base: ArtifactMetadata, proto: Any, precision: Precision) -> ArtifactMetadata:
    from cervrt.export.fp16 import fp32_op_types

    io = graph_io(proto)
    fp16 = precision is Precision.FP16
    return base.replace(precision=precision.value, io_dtype=io["inputs"][0]["dtype"],
                        fp32_ops=fp32_op_types(proto) if fp16 else [],
                        fp32_pooled_path=fp32_op_types(proto, pooled=True) if fp16 else [])


def _save_checked(proto: Any, target: Path, verify: Callable[[Any], None]) -> int:
    """Write ``proto`` beside ``target``, verify the written file, then rename it into place."""
    import onnx

    from cervrt.export.parity import ort_session

    with atomic_path(target) as tmp:
        onnx.save(proto, tmp)
        onnx.checker.check_model(str(tmp))
        verify(ort_session(tmp))
        size = tmp.stat().st_size
    return size


class _Run:
    """One export in progress: the loaded model, its samples and what has been written so far."""

    def __init__(self, config: ExportConfig, echo: Echo) -> None:
        self.config, self.echo, self.clock = config, echo, _Clock()
        self.files: dict[str, Path] = {}
        self.sizes: dict[str, int] = {}
        self.checks: list[Any] = []
        self.protos: dict[Precision, Any] = {}
        self.metadata: dict[Precision, ArtifactMetadata] = {}

    # --- stages ----------------------------------------------------------------------------------

    def load(self) -> None:
        from cervrt.checkpoint import file_sha256, load_checkpoint
        from cervrt.models import get_spec, model_from_checkpoint

        since = time.perf_counter()
        self.ckpt = load_checkpoint(self.config.checkpoint)
        if get_spec(self.ckpt["arch"]).is_classifier:
            raise CervrtError(f"{self.config.checkpoint} is a patch classifier, which predicts no masks: "
                              "export a segmentation checkpoint (hspnet, deeplabv3plus, ensemble_a)")
        self.model = model_from_checkpoint(self.ckpt)
        self.base = _base_metadata(self.ckpt, self.model, self.config, file_sha256(self.config.checkpoint))
        self.clock.lap("load", since)

    def export_fp32(self) -> None:
        from cervrt.export.onnx_export import export_fp32

        since = time.perf_counter()
        proto = export_fp32(self.model, self.ckpt["patch_size"], self.config.opset)
        self._finish_proto(Precision.FP32, proto)
        since = self.clock.lap("export", since)
        self.echo(f"exported {self.ckpt['arch']} {self.ckpt['arch_kwargs']} to ONNX opset {self.config.opset} "
                  f"({self.base.params / 1e6:.2f}M parameters) in {self.seconds('export'):.1f} s")
        self._prepare_parity()
        self.clock.lap("parity", since)

    def _finish_proto(self, precision: Precision, proto: Any) -> None:
        self.metadata[precision] = _graph_metadata(self.base, proto, precision)
        attach_metadata(proto, self.metadata[precision])
        self.protos[precision] = proto

    def _prepare_parity(self) -> None:
        from cervrt.export.parity import make_samples, torch_outputs

        self.samples = make_samples(self.ckpt["patch_size"], self.ckpt["mean"], self.ckpt["std"])
        self.torch_out = torch_outputs(self.model, self.samples)

    def _verify_fp32(self, session: Any) -> None:
        from cervrt.export.parity import FP32_AGREEMENT, compare, require, run_session

        self.fp32_out = [run_session(session, s.image) for s in self.samples]
        checks = [compare("fp32 onnx", "torch", s, ref, out, FP32_AGREEMENT)
                  for s, ref, out in zip(self.samples, self.torch_out, self.fp32_out, strict=True)]
        self._report(checks)
        require(checks)

    def _verify_fp16(self, session: Any) -> None:
        from cervrt.export.parity import FP16_AGREEMENT, compare, require, run_session

        checks = [compare("fp16 onnx", "fp32 onnx", s, ref, run_session(session, s.image), FP16_AGREEMENT)
                  for s, ref in zip(self.samples, self.fp32_out, strict=True) if s.name == "tissue"]
        self._report(checks)
        require(checks)

    def _report(self, checks: Sequence[Any]) -> None:
        self.checks.extend(checks)
        for check in checks:
            self.echo(check.describe())

    def write_fp32(self) -> None:
        from cervrt.export.parity import ort_session

        since = time.perf_counter()
        target = self.config.output if self.config.precision is Precision.FP32 else self.config.fp32_output
        if target is None:  # FP16 only: the FP32 reference is checked in memory, never written
            self._verify_fp32(ort_session(self.protos[Precision.FP32]))
        else:
            self._record("fp32", target, _save_checked(self.protos[Precision.FP32], target, self._verify_fp32))
        self.clock.lap("parity", since)

    def write_fp16(self) -> None:
        from cervrt.export.fp16 import convert_to_fp16
        from cervrt.export.onnx_export import check_graph

        since = time.perf_counter()
        proto = convert_to_fp16(self.protos[Precision.FP32], fp16_io=self.config.fp16_io)
        check_graph(proto)
        self._finish_proto(Precision.FP16, proto)
        since = self.clock.lap("fp16", since)
        self._record("fp16", self.config.output, _save_checked(proto, self.config.output, self._verify_fp16))
        self.clock.lap("parity", since)

    def draw_calibration(self) -> None:
        from cervrt.export.calibration import draw_calibration

        since = time.perf_counter()
        self.calibration = draw_calibration(self.config.calibration, self.ckpt["patch_size"], self.ckpt.get("mpp"),
                                            self.config.calibration_patches)
        self.clock.lap("calibration", since)

    def write_int8(self) -> None:
        from cervrt.export.int8 import build_int8

        since = time.perf_counter()
        proto, self.metadata[Precision.INT8], result = build_int8(self.protos[Precision.FP32],
                                                                  self.metadata[Precision.FP32], self.calibration,
                                                                  self.echo)
        self.protos[Precision.INT8] = proto
        self.checks.extend(result.checks)
        since = self.clock.lap("int8", since)
        self._record("int8", self.config.output, _save_checked(proto, self.config.output, result.verify))
        self.clock.lap("parity", since)

    def build_engine(self, env: Any) -> None:
        from cervrt.export.onnx_export import INPUT_NAME
        from cervrt.export.tensorrt_build import build_engine, build_recipe

        since = time.perf_counter()
        engine = self.config.engine
        recipe = build_recipe(env.version, self.config.precision)
        source = self.protos.get(recipe.onnx_precision)
        if source is None:  # an FP16 route needs the FP16 graph even for an FP32 ONNX export
            raise CervrtError(f"the {recipe.onnx_precision.value} ONNX this TensorRT needs was not exported")
        plan = build_engine(env, source.SerializeToString(), recipe, engine, INPUT_NAME, self.ckpt["patch_size"],
                            self.echo)
        metadata = self._plan_metadata(env, recipe, source, plan)
        with atomic_path(engine.path) as tmp:
            tmp.write_bytes(plan)
            write_plan_metadata(engine.path, metadata)
        self._record("engine", engine.path, len(plan))
        self._record("engine_json", engine.json_path, engine.json_path.stat().st_size)
        cache = timing_cache_path(engine.path)
        self._record("timing_cache", cache, cache.stat().st_size)
        self.clock.lap("engine", since)

    def _plan_metadata(self, env: Any, recipe: Any, source: Any, plan: bytes) -> ArtifactMetadata:
        from cervrt.export.tensorrt_build import profile_shapes

        engine = self.config.engine
        onnx_meta = self.metadata[recipe.onnx_precision]
        if recipe.fp16_builder_flag:  # weak typing: FP32 preferred, not guaranteed, for these layers
            onnx_meta = onnx_meta.replace(fp32_ops=["Softmax", "Reduce (preferred)"])
        return onnx_meta.replace(
            format=PLAN_FORMAT, precision=self.config.precision.value, **graph_io(source),
            tensorrt_version=env.version, gpu_name=env.gpu_name, compute_capability=env.compute_capability,
            build_route=recipe.route,
            profile={"input": onnx_meta.input, **profile_shapes(engine.batch, self.ckpt["patch_size"])},
            workspace_gb=engine.workspace_gb, timing_cache=timing_cache_path(engine.path).name,
            plan_sha256=hashlib.sha256(plan).hexdigest())

    # --- bookkeeping -----------------------------------------------------------------------------

    def _record(self, role: str, path: Path, size: int) -> None:
        self.files[role], self.sizes[role] = path, size
        self.echo(f"wrote {path} ({size / 2**20:.1f} MiB)")

    def seconds(self, name: str) -> float:
        return self.clock.seconds.get(name, 0.0)

    def result(self) -> ExportResult:
        precision = self.config.precision
        return ExportResult(self.config.output, precision, dict(self.files), dict(self.sizes), self.clock.total(),
                            tuple(self.checks), self.metadata[precision].to_dict())


def export(config: ExportConfig, echo: Echo | None = None) -> ExportResult:
    """Export ``config.checkpoint`` as ``config`` says; ``echo`` receives one progress line at a time.

    Raises CervrtError (one line, nothing written) for a missing, truncated, foreign or malicious
    checkpoint, an unknown architecture, an output directory that is missing or read-only, a missing
    tensorrt package or GPU when an engine is asked for, and a parity check below its threshold.
    """
    if not isinstance(config, ExportConfig):
        raise CervrtError(f"export takes an ExportConfig, got {type(config).__name__}")
    _check_destinations(config)
    env = None
    if config.engine is not None:
        from cervrt.export.tensorrt_build import require_tensorrt

        env = require_tensorrt()
    run = _Run(config, echo or (lambda _message: None))
    run.load()
    if config.precision is Precision.INT8:
        run.draw_calibration()  # bad calibration input fails here, before the trace
    run.export_fp32()
    run.write_fp32()
    if config.precision is Precision.FP16:
        run.write_fp16()
    if config.precision is Precision.INT8:
        run.write_int8()
    if env is not None:
        run.build_engine(env)
    return run.result()
