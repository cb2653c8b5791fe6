"""From a checkpoint dict to a model and to its typed description (needs torch).

``model_from_checkpoint`` rebuilds a registered architecture and loads its weights strictly;
``describe_model`` builds the :class:`~cervrt.artifact.ArtifactMetadata` of a checkpoint's model with
the keys and meanings of an exported ONNX file's (the exporter and the torch engine both use it).
The file format itself (save, load, validation) is ``cervrt.checkpoint``, which imports nothing
from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from cervrt.artifact import NORMALIZATION, ArtifactMetadata
from cervrt.checkpoint import describe
from cervrt.errors import CervrtError
from cervrt.models.registry import create_model, get_spec

__all__ = ["describe_model", "model_from_checkpoint"]

#: The input and outputs every exported cervrt graph has (``class_probs`` only with a classifier head).
_INPUT = "image"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line.split(". ")[0]


def model_from_checkpoint(checkpoint: Mapping[str, Any]) -> nn.Module:
    """Rebuild the model of ``checkpoint`` and load its weights (strictly), in eval mode."""
    model = create_model(checkpoint["arch"], **checkpoint["arch_kwargs"])
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CervrtError(f"the checkpoint's weights do not fit {checkpoint['arch']}: {_first_line(exc)}") from None
    return model.eval()


def describe_model(checkpoint: Mapping[str, Any], model: nn.Module, *, source_checkpoint: str,
                   format: str | None = None, **fields: Any) -> ArtifactMetadata:
    """The metadata of ``checkpoint``'s ``model``: description, complexity, capabilities, I/O names.

    Defaults are those of the checkpoint run by torch (precision fp32, float32 I/O, no opset, the
    checkpoint's versions); ``fields`` (any :class:`ArtifactMetadata` key) override them.
    """
    from cervrt.flops import model_complexity

    spec = get_spec(checkpoint["arch"])
    outputs = ["probs", "class_probs"] if spec.has_classifier else ["probs"]
    described: dict[str, Any] = {
        "format": format, **describe(dict(checkpoint)), **model_complexity(model, checkpoint["patch_size"]),
        "has_classifier": spec.has_classifier, "size_multiple": spec.size_multiple,
        "precision": "fp32", "io_dtype": "float32", "opset": None, "input": _INPUT, "outputs": outputs,
        "normalization": NORMALIZATION, "source_checkpoint": source_checkpoint,
        "cervrt_version": checkpoint.get("cervrt_version"), "torch_version": checkpoint.get("torch_version"),
        **fields,
    }
    return ArtifactMetadata.from_dict(described, source_checkpoint)
