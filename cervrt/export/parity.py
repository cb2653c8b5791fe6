"""Parity checks: does the exported graph compute what the model does?

Two inputs, both made here from a fixed seed so that every export is checked the same way:

- ``random``: standard-normal values, batch 2, at the patch size by the patch size + 32 (a batch
  above 1 and a non-square size exercise the dynamic axes);
- ``tissue``: one synthetic H&E region (``cervrt.synth.synthesize_region``) at the patch size,
  or 256 px for smaller patches so that the agreement counts at least 65,536 pixels (one pixel is
  then 0.0015%, far below the FP16 tolerance of 0.1%), normalised with the checkpoint's mean/std
  exactly as the runtime will.

Each check reports the largest absolute difference over all outputs (probabilities, and class
probabilities where present) and the share of pixels whose argmax class agrees. ONNX Runtime runs
on ``CPUExecutionProvider`` (onnxruntime-gpu works on a CPU-only machine that way). Thresholds: FP32
against torch 99.99% on both inputs; FP16 against FP32 99.9% on tissue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cervrt.errors import CervrtError

__all__ = [
    "FP16_AGREEMENT",
    "FP32_AGREEMENT",
    "ParityCheck",
    "Sample",
    "compare",
    "make_samples",
    "ort_session",
    "require",
    "run_session",
    "torch_outputs",
]

FP32_AGREEMENT = 0.9999
FP16_AGREEMENT = 0.999
_MIN_TISSUE = 256  # pixels per side of the smallest tissue sample (see the module docstring)


@dataclass(frozen=True)
class Sample:
    """One named input batch, float32 NCHW, normalised."""

    name: str
    image: np.ndarray


@dataclass(frozen=True)
class ParityCheck:
    """How far ``candidate`` is from ``reference`` on one sample."""

    candidate: str
    reference: str
    sample: str
    shape: tuple[int, ...]
    max_abs_diff: float
    agreement: float
    threshold: float
    finite: bool = True

    @property
    def passed(self) -> bool:
        return self.finite and self.agreement >= self.threshold

    def describe(self) -> str:
        shape = "x".join(map(str, self.shape))
        text = (f"parity {self.candidate} vs {self.reference}, {self.sample} {shape}: max |diff| "
                f"{self.max_abs_diff:.3g}, argmax agreement {self.agreement:.4%} (needs {self.threshold:.2%})")
        return text if self.finite else text + ", NON-FINITE OUTPUT"


def make_samples(patch_size: int, mean: Sequence[float], std: Sequence[float], seed: int = 0) -> list[Sample]:
    """The ``random`` and ``tissue`` inputs for a model with this patch size and normalisation."""
    from cervrt.synth import synthesize_region

    rng = np.random.default_rng(seed)
    random = rng.standard_normal((2, 3, patch_size, patch_size + 32), dtype=np.float32)
    rgb, _ = synthesize_region(np.random.default_rng(seed), max(patch_size, _MIN_TISSUE))
    scaled = (rgb.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    tissue = np.ascontiguousarray(scaled.transpose(2, 0, 1)[None], dtype=np.float32)
    return [Sample("random", random), Sample("tissue", tissue)]


def torch_outputs(model: Any, samples: Sequence[Sample]) -> list[list[np.ndarray]]:
    """The model's ``predict_proba`` outputs (float32 numpy) for each sample."""
    import torch

    from cervrt.export.onnx_export import ProbabilityGraph

    graph = ProbabilityGraph(model).eval()
    results = []
    with torch.no_grad():
        for sample in samples:
            out = graph(torch.from_numpy(sample.image))
            results.append([t.float().numpy() for t in (out if isinstance(out, tuple) else (out,))])
    return results


def ort_session(model: Any) -> Any:
    """An ONNX Runtime CPU session for a path, serialised bytes or a ModelProto."""
    import onnxruntime as ort

    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no provider-placement chatter
    try:
        return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for invalid graphs
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise CervrtError(f"ONNX Runtime cannot load the exported graph: {first}") from None


def run_session(session: Any, image: np.ndarray) -> list[np.ndarray]:
    """Run ``session`` on one batch (cast to its input type); outputs as float32."""
    feed = session.get_inputs()[0]
    dtype = np.float16 if feed.type == "tensor(float16)" else np.float32
    return [np.asarray(o, dtype=np.float32) for o in session.run(None, {feed.name: image.astype(dtype)})]


def compare(candidate: str, reference: str, sample: Sample, expected: Sequence[np.ndarray],
            actual: Sequence[np.ndarray], threshold: float) -> ParityCheck:
    """Largest absolute difference over all outputs and argmax agreement of the first (``probs``)."""
    if len(expected) != len(actual):
        raise CervrtError(f"{candidate} has {len(actual)} outputs where {reference} has {len(expected)}")
    diff = max(float(np.max(np.abs(e - a))) for e, a in zip(expected, actual, strict=True))
    agreement = float(np.mean(np.argmax(expected[0], axis=1) == np.argmax(actual[0], axis=1)))
    finite = all(bool(np.isfinite(a).all()) for a in actual)
    return ParityCheck(candidate, reference, sample.name, tuple(sample.image.shape), diff, agreement, threshold, finite)


def require(checks: Sequence[ParityCheck]) -> None:
    """CervrtError naming the first check below its threshold (nothing is written after it)."""
    for check in checks:
        if not check.finite:
            raise CervrtError(
                f"the {check.candidate} export gives NaN/inf on {check.sample} input: its activations exceed the "
                f"range of its precision (FP16: +-65504), as in untrained or badly scaled networks; export this "
                f"model in FP32; no file was written"
            )
        if not check.passed:
            raise CervrtError(
                f"the {check.candidate} export disagrees with {check.reference} on {check.sample} input: argmax "
                f"agreement {check.agreement:.4%} is below {check.threshold:.2%} (max |diff| "
                f"{check.max_abs_diff:.3g}); no file was written"
            )
