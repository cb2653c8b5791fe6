"""The model ``cervrt bench`` measures when given no ``--models``: a short synthetic training, as the demo does.

An untrained network's probabilities are near-uniform, so its label agreement and Dice say nothing.
``build_trained_models`` therefore trains HSP-Net ResNet-34 on a small synthetic MTCHI-layout dataset
(``cervrt.synth.write_dataset`` and ``cervrt.train.loop.train``, the demo's recipe and sizes in the full
run, smaller with ``--quick``), then exports it as the demo does (``cervrt.demo.export_demo_model``: FP32
and FP16 ONNX, each gated) and to INT8 (``cervrt export --precision int8``, calibrated on the training
images' tissue, gated on 99% agreement). A refused FP16 or INT8 graph is left out and the note says why.

Everything lands in the report's ``models/`` directory; a later run with the same directory reuses the
checkpoint (and the exported files newer than it) instead of training again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cervrt.bench.config import ModelSettings
from cervrt.bench.models import BuiltModels
from cervrt.errors import CervrtError

__all__ = ["build_trained_models"]

Echo = Callable[[str], None]


def _fresh(path: Path, checkpoint: Path) -> bool:
    return path.is_file() and path.stat().st_mtime >= checkpoint.stat().st_mtime


def _train(directory: Path, settings: ModelSettings, echo: Echo) -> Path:
    from cervrt.synth import write_dataset
    from cervrt.train.loop import TrainConfig, train

    checkpoint = directory / "run" / "best.pt"
    if checkpoint.is_file():
        echo(f"no --models given: reusing the synthetic model {checkpoint}")
        return checkpoint
    s = settings
    echo(f"no --models given: training HSP-Net ResNet-34 on {s.regions} synthetic regions of {s.region_size} px "
         f"({s.patch_size} px patches, at most {s.epochs} epoch(s) / {s.minutes:g} min) in {directory}")
    write_dataset(directory / "data", regions=s.regions, size=s.region_size, seed=s.seed, progress=False)
    config = TrainConfig(data=str(directory / "data"), out=str(directory / "run"), arch="hspnet", encoder="resnet34",
                         epochs=s.epochs, batch_size=s.batch_size, loss="ae", patch_size=s.patch_size,
                         stride=s.stride, seed=s.seed, time_limit_minutes=s.minutes, device="cpu")
    train(config, log=lambda message: echo("  " + message))
    if not checkpoint.is_file():
        raise CervrtError(f"the benchmark's synthetic training wrote no {checkpoint}")
    return checkpoint


def _export_fp(checkpoint: Path, directory: Path, echo: Echo) -> tuple[Path, Path | None, str | None]:
    from cervrt.demo import export_demo_model

    fp32, fp16 = directory / "model.onnx", directory / "model.fp16.onnx"
    if _fresh(fp32, checkpoint):
        return fp32, fp16 if _fresh(fp16, checkpoint) else None, None
    exported = export_demo_model(checkpoint, directory, echo=echo)
    return Path(exported["fp32"]), None if exported["fp16"] is None else Path(exported["fp16"]), \
        exported.get("fp16_refused")


def _export_int8(checkpoint: Path, directory: Path, patches: int, echo: Echo) -> tuple[Path | None, str | None]:
    from cervrt.export import ExportConfig, export

    int8 = directory / "model.int8.onnx"
    if _fresh(int8, checkpoint):
        return int8, None
    config = ExportConfig(checkpoint, output=int8, precision="int8", calibration=(directory / "data",),
                          calibration_patches=patches)
    try:
        return export(config, echo=lambda message: echo("  " + message)).onnx, None
    except CervrtError as exc:
        echo(f"  INT8 export refused: {exc}")
        return None, str(exc)


def build_trained_models(directory: Path, settings: ModelSettings, echo: Echo) -> BuiltModels:
    """Train (or reuse) the synthetic HSP-Net ResNet-34 in ``directory``; its checkpoint, FP32, FP16 and INT8 ONNX."""
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = _train(directory, settings, echo)
    fp32, fp16, fp16_refused = _export_fp(checkpoint, directory, echo)
    int8, int8_refused = _export_int8(checkpoint, directory, settings.calibration_patches, echo)
    note = (f"No --models given: cervrt bench trained HSP-Net ResNet-34 briefly on synthetic data "
            f"({settings.regions} regions of {settings.region_size} px, {settings.patch_size} px patches, at most "
            f"{settings.minutes:g} min; in {directory}) and exported it to FP32, FP16 and INT8 ONNX. A short training: "
            "its accuracy is what a few minutes give, unlike an untrained network's it predicts more than one class "
            "(the classes each engine predicts on the test slide are listed in the CPU fast path table).")
    for name, refused in (("FP16", fp16_refused), ("INT8", int8_refused)):
        if refused:
            note += f" The {name} export was refused: {refused}"
    paths = tuple(p for p in (checkpoint, fp32, fp16, int8) if p is not None)
    return BuiltModels(paths, note, int8_absent=None if int8 else f"the INT8 export was refused: {int8_refused}")
