"""``cervrt adopt``: give an ONNX segmentation model that cervrt did not export cervrt's metadata.

The model must take one float (or float16) NCHW image batch (N, 3, H, W) -- normalised as
``image = (rgb / 255 - mean) / std`` with the ``mean``/``std`` given -- and return one (N, K, H, W)
map of per-pixel scores for its K classes. ``adopt`` writes a copy of it that cervrt runs:

1. it picks the input and the output (``input_name``/``output_name`` when the graph has several),
   refuses a channel-last (N, H, W, 3) input, a non-float input and fixed sides other than ``patch``,
   and makes a batch axis fixed at 1 dynamic;
2. with ``output_kind="logits"`` it appends a Softmax over the classes (axis 1);
3. with a ``class_map`` (model class -> cervrt grade) it appends a 1x1 convolution that adds up the
   probabilities of the model classes mapped onto each of cervrt's five classes; without one the
   model keeps its own classes (reports and palettes follow them);
4. it runs the source model and the copy on a test tile of two patches and refuses, in one line,
   outputs of the wrong shape (NHWC, another size, another class count), scores declared as
   probabilities that are not (values in [0, 1] summing to 1 within 1e-3, see
   ``cervrt.probs_check``), and probabilities declared as logits;
5. only then it writes the copy (atomically) with the cervrt metadata: the schema of
   ``cervrt.artifact`` (``format`` ``cervrt.onnx``, ``format_version`` 1), ``arch`` ``"adopted"``,
   and an ``adopted`` object saying where the model came from, what was added and what was checked.

Needs onnx and onnxruntime, never torch.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cervrt._io import atomic_path
from cervrt.artifact import FORMAT_VERSION, NORMALIZATION, ONNX_FORMAT, ArtifactMetadata, attach_metadata
from cervrt.constants import CLASS_NAMES, PALETTE
from cervrt.errors import InputError, ModelError
from cervrt.probs_check import PROB_TOLERANCE, check_probabilities

__all__ = ["OUTPUT_KINDS", "TEST_BATCH", "AdoptConfig", "AdoptResult", "adopt", "parse_class_map", "parse_floats",
           "parse_names", "probe_batch"]

OUTPUT_KINDS = ("probs", "logits")
#: Patches in the test tile (two, so that a model which only takes batch 1 is caught).
TEST_BATCH = 2
#: Colours for classes of a model's own (after black for the first, its background).
_COLOURS = ((0, 0, 0), (255, 255, 255), (0, 255, 0), (0, 0, 255), (255, 0, 0), (255, 255, 0), (0, 255, 255),
            (255, 0, 255), (255, 128, 0), (128, 0, 255), (0, 128, 128), (128, 128, 0), (128, 128, 128))
_FLOAT_TYPES = {1: "float32", 10: "float16"}  # onnx TensorProto elem types cervrt engines feed


# ---- options ------------------------------------------------------------------------------------


def _key(name: str) -> str:
    """Class names compare without case, spaces, '-' or '_' ("cin1" is "CIN 1")."""
    return re.sub(r"[\s_-]+", "", name).lower()


def parse_names(text: str | Sequence[str], what: str = "--classes") -> tuple[str, ...]:
    """Comma-separated names (or a sequence) -> a tuple of 2 to 256 distinct, non-empty names."""
    names = tuple(n.strip() for n in (text.split(",") if isinstance(text, str) else text))
    if len(names) < 2 or any(not n for n in names):
        raise InputError(f"{what} takes 2 or more comma-separated class names, background first, got {text!r}")
    if len({_key(n) for n in names}) != len(names):
        raise InputError(f"{what} names a class twice: {', '.join(names)}")
    if len(names) > 256:
        raise InputError(f"{what} names {len(names)} classes; cervrt takes at most 256")
    return names


def parse_floats(text: str | Sequence[float], what: str, count: int = 3) -> tuple[float, ...]:
    """``count`` comma-separated numbers (RGB mean or std, on the 0..1 scale)."""
    try:
        values = tuple(float(v) for v in (text.split(",") if isinstance(text, str) else text))
    except (TypeError, ValueError):
        raise InputError(f"{what} takes {count} comma-separated numbers (R,G,B on the 0..1 scale), "
                         f"got {text!r}") from None
    if len(values) != count or not all(np.isfinite(values)):
        raise InputError(f"{what} takes {count} comma-separated numbers (R,G,B on the 0..1 scale), got {text!r}")
    return values


def parse_class_map(text: str | Mapping[str, str], classes: Sequence[str]) -> dict[str, str]:
    """``"model=cervrt,..."`` (or a mapping) -> {model class: cervrt class}; every model class mapped once."""
    pairs = text.items() if isinstance(text, Mapping) else [p.partition("=")[::2] for p in text.split(",")]
    grades = {_key(name): name for name in CLASS_NAMES}
    own = {_key(name): name for name in classes}
    mapping: dict[str, str] = {}
    for source, target in pairs:
        source, target = str(source).strip(), str(target).strip()
        if _key(source) not in own:
            raise InputError(f"--class-map maps {source!r}, which is not one of --classes ({', '.join(classes)})")
        if _key(target) not in grades:
            raise InputError(f"--class-map maps {source!r} to {target!r}: choose one of {', '.join(CLASS_NAMES)}")
        if own[_key(source)] in mapping:
            raise InputError(f"--class-map maps {source!r} twice")
        mapping[own[_key(source)]] = grades[_key(target)]
    missing = [name for name in classes if name not in mapping]
    if missing:
        raise InputError(f"--class-map leaves {', '.join(missing)} unmapped: map every model class, "
                         f"e.g. {missing[0]}=background")
    return mapping


@dataclass(frozen=True)
class AdoptConfig:
    """What ``adopt`` needs to know about a foreign model (see the module docstring)."""

    source: Path
    output: Path
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mpp: float
    patch: int
    output_kind: str = "probs"
    input_name: str | None = None
    output_name: str | None = None
    class_map: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", Path(self.source))
        object.__setattr__(self, "output", Path(self.output))
        object.__setattr__(self, "classes", parse_names(self.classes))
        object.__setattr__(self, "mean", parse_floats(self.mean, "--mean"))
        object.__setattr__(self, "std", parse_floats(self.std, "--std"))
        if any(s <= 0 for s in self.std):
            raise InputError(f"--std must be positive, got {','.join(map(str, self.std))}")
        if not (isinstance(self.mpp, (int, float)) and np.isfinite(self.mpp) and self.mpp > 0):
            raise InputError(f"--mpp must be positive microns per pixel, got {self.mpp!r}")
        if isinstance(self.patch, bool) or not isinstance(self.patch, int) or self.patch < 32:
            raise InputError(f"--patch must be an integer side of at least 32 pixels, got {self.patch!r}")
        if self.output_kind not in OUTPUT_KINDS:
            raise InputError(f"--output must be one of {', '.join(OUTPUT_KINDS)}, got {self.output_kind!r}")
        if self.class_map is not None:
            object.__setattr__(self, "class_map", parse_class_map(self.class_map, self.classes))
        if self.output.suffix.lower() != ".onnx":
            raise InputError(f"-o must name an .onnx file, got {self.output}")
        if self.output.resolve() == self.source.resolve():
            raise InputError("-o must differ from the source model: adopt writes a copy")

    @property
    def final_classes(self) -> tuple[str, ...]:
        """The classes of the adopted model: cervrt's with a class map, else the model's own."""
        return CLASS_NAMES if self.class_map else self.classes


@dataclass(frozen=True)
class AdoptResult:
    """The adopted model's path, its cervrt metadata (JSON form) and what the test tile showed."""

    path: Path
    metadata: dict[str, Any]
    checks: dict[str, Any] = field(default_factory=dict)


# ---- the graph ------------------------------------------------------------------------------------


def _load(path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise InputError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        return onnx.load(path)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ModelError(f"{path} is not a readable ONNX file (truncated or corrupt?): {type(exc).__name__}") from None


def _dims(value: Any) -> list[int | str]:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in value.type.tensor_type.shape.dim]


def _pick(values: Sequence[Any], wanted: str | None, what: str, option: str) -> Any:
    names = [v.name for v in values]
    if wanted is not None:
        if wanted not in names:
            raise InputError(f"the model has no {what} {wanted!r}; its {what}s are {', '.join(names)}")
        return values[names.index(wanted)]
    if len(values) != 1:
        raise InputError(f"the model has {len(values)} {what}s ({', '.join(names)}): name one with {option}")
    return values[0]


def _graph_inputs(model: Any) -> list[Any]:
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def _check_input(value: Any, patch: int, inputs: int) -> str:
    """The input's dtype name; InputError for what cervrt cannot feed (it feeds (N, 3, patch, patch) floats)."""
    if inputs != 1:
        raise InputError(f"the model has {inputs} inputs; cervrt feeds one image batch (N, 3, H, W)")
    elem = value.type.tensor_type.elem_type
    if elem not in _FLOAT_TYPES:
        raise InputError(f"the model's input {value.name!r} is not float or float16 (ONNX type {elem}); cervrt feeds "
                         "normalised float images")
    dims = _dims(value)
    if len(dims) != 4:
        raise InputError(f"the model's input {value.name!r} has shape {dims}; cervrt feeds (N, 3, H, W) batches")
    if dims[1] != 3 and dims[3] == 3:
        raise InputError(f"the model's input {value.name!r} is channel-last {dims} (NHWC); cervrt feeds (N, 3, H, W): "
                         "export the model with a channel-first input")
    if isinstance(dims[1], int) and dims[1] != 3:
        raise InputError(f"the model's input {value.name!r} takes {dims[1]} channels; cervrt feeds 3 (RGB)")
    sides = [d for d in dims[2:] if isinstance(d, int)]
    if any(side != patch for side in sides):
        raise InputError(f"the model takes {dims[2]}x{dims[3]} inputs, not --patch {patch}: pass --patch "
                         f"{sides[0]}" + ("" if len(set(sides)) == 1 else " (cervrt needs square patches)"))
    return _FLOAT_TYPES[elem]


def _free_batch_axis(model: Any) -> bool:
    """Make a batch axis fixed at 1 symbolic (``N``) on the input and outputs; whether one was."""
    changed = False
    for value in [*_graph_inputs(model), *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_param = "N"
            changed = True
    return changed


def _opset(model: Any) -> int | None:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return int(versions[0]) if versions else None


def _unique(model: Any, name: str) -> str:
    taken = {v for node in model.graph.node for v in node.output} | {v.name for v in model.graph.input}
    taken |= {t.name for t in model.graph.initializer}
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    return candidate


def _softmax_nodes(model: Any, source: str, target: str) -> list[Any]:
    """Softmax over axis 1 (opset 13+), or through NHWC for older opsets (whose Softmax flattens)."""
    from onnx import helper

    if (_opset(model) or 13) >= 13:
        return [helper.make_node("Softmax", [source], [target], axis=1, name=_unique(model, "cervrt_softmax"))]
    nhwc, soft = _unique(model, f"{target}_nhwc"), _unique(model, f"{target}_nhwc_softmax")
    return [helper.make_node("Transpose", [source], [nhwc], perm=[0, 2, 3, 1]),
            helper.make_node("Softmax", [nhwc], [soft], axis=3),
            helper.make_node("Transpose", [soft], [target], perm=[0, 3, 1, 2])]


def _class_map_nodes(model: Any, source: str, target: str, config: AdoptConfig, elem: int) -> list[Any]:
    """A 1x1 Conv summing each cervrt class's mapped model classes: weight[j, k] = 1 when k maps to j."""
    from onnx import helper, numpy_helper

    mapping = config.class_map or {}
    weight = np.zeros((len(CLASS_NAMES), len(config.classes), 1, 1), dtype=np.float16 if elem == 10 else np.float32)
    for k, name in enumerate(config.classes):
        weight[CLASS_NAMES.index(mapping[name]), k] = 1
    name = _unique(model, "cervrt_class_map")
    model.graph.initializer.append(numpy_helper.from_array(weight, name))
    return [helper.make_node("Conv", [source, name], [target], kernel_shape=[1, 1], name=_unique(model, "cervrt_map"))]


def _append_head(model: Any, output: Any, config: AdoptConfig) -> tuple[str, list[str]]:
    """Append the softmax and class map after ``output``; the graph's one output name and what was added."""
    from onnx import helper

    elem = output.type.tensor_type.elem_type or 1
    current, added, nodes = output.name, [], []
    if config.output_kind == "logits":
        target = _unique(model, "probs")
        nodes += _softmax_nodes(model, current, target)
        current = target
        added.append("softmax over axis 1")
    if config.class_map:
        target = _unique(model, "probs_mapped" if current == "probs" else "probs")
        nodes += _class_map_nodes(model, current, target, config, elem)
        current = target
        added.append(f"class map {len(config.classes)} -> {len(CLASS_NAMES)} classes (1x1 Conv)")
    model.graph.node.extend(nodes)
    dims = _dims(output)
    if len(dims) == 4:
        dims[1] = len(config.final_classes)
    shape = [d if d != "?" else None for d in dims] or None
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(current, elem, shape))
    return current, added


# ---- the test tile ----------------------------------------------------------------------------------


def probe_batch(config: AdoptConfig, dtype: str, seed: int = 0) -> np.ndarray:
    """A normalised (TEST_BATCH, 3, patch, patch) batch of tissue-coloured noise, as the runtime would feed."""
    rng = np.random.default_rng(seed)
    rgb = rng.normal((200, 120, 170), 35, size=(TEST_BATCH, config.patch, config.patch, 3)).clip(0, 255).round()
    image = (rgb / 255.0 - np.asarray(config.mean)) / np.asarray(config.std)
    return np.ascontiguousarray(image.transpose(0, 3, 1, 2), dtype=dtype)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _run(model: Any, output: str, batch: np.ndarray, what: str) -> np.ndarray:
    """``output`` of ``model`` (an in-memory ONNX model) on ``batch``, on the CPU; ModelError when it fails."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                       providers=["CPUExecutionProvider"])
        (result,) = session.run([output], {session.get_inputs()[0].name: batch})
    except Exception as exc:  # ORT's own exception types
        raise ModelError(f"{what} fails on a test tile of shape {batch.shape}: {_first_line(exc)}") from None
    return np.asarray(result)


def _check_raw(raw: np.ndarray, config: AdoptConfig) -> None:
    """The source model's scores: (N, K, patch, patch), and probabilities exactly when declared so."""
    n, k, p = TEST_BATCH, len(config.classes), config.patch
    if raw.ndim == 4 and raw.shape[1] != k and raw.shape[3] != k and raw.shape[2:] == (p, p):
        raise ModelError(f"the model returns {raw.shape[1]} channels for the {k} classes of --classes; name one "
                         "class per output channel, in channel order")
    if config.output_kind == "probs":
        check_probabilities(raw, (n, k, p, p), "the model", "pass --output logits if they are logits")
        return
    try:
        check_probabilities(raw, (n, k, p, p), "the model")
    except ModelError as exc:
        if "not probabilities" in str(exc):
            return  # logits, as declared
        raise
    raise ModelError("the model's outputs are already probabilities summing to 1 but --output logits was given: "
                     "pass --output probs (a second softmax would flatten them)")


def _check_model(source: Any, adopted: Any, raw_name: str, final_name: str, config: AdoptConfig,
                 dtype: str) -> dict[str, Any]:
    batch = probe_batch(config, dtype)
    raw = _run(source, raw_name, batch, "the model")
    _check_raw(raw, config)
    probs = _run(adopted, final_name, batch, "the adopted model")
    shape = (TEST_BATCH, len(config.final_classes), config.patch, config.patch)
    check_probabilities(probs, shape, "the adopted model")
    values = probs.astype(np.float64)
    return {"tile": list(batch.shape), "raw_output": list(raw.shape),
            "raw_range": [float(raw.min()), float(raw.max())], "output": list(probs.shape),
            "range": [float(values.min()), float(values.max())],
            "max_sum_error": float(np.abs(values.sum(axis=1) - 1).max()), "tolerance": PROB_TOLERANCE}


# ---- metadata and the whole job -----------------------------------------------------------------------


def _palette(classes: Sequence[str]) -> list[list[int]]:
    if [_key(c) for c in classes] == [_key(c) for c in CLASS_NAMES]:
        return [list(c) for c in PALETTE]
    rng = np.random.default_rng(len(classes))
    colours = [list(c) for c in _COLOURS[: len(classes)]]
    colours += [rng.integers(0, 256, 3).tolist() for _ in range(len(classes) - len(colours))]
    return colours


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _metadata(model: Any, config: AdoptConfig, input_name: str, output: str, dtype: str, added: list[str],
              raw_output: str, checks: dict[str, Any]) -> ArtifactMetadata:
    import onnx

    from cervrt import __version__

    classes = config.final_classes
    params = int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))
    producer = " ".join(v for v in (model.producer_name, model.producer_version) if v) or None
    adopted = {"source": str(config.source), "producer": producer, "input": input_name, "output": raw_output,
               "output_kind": config.output_kind, "classes": list(config.classes), "added": added,
               "class_map": dict(config.class_map) if config.class_map else None, "checks": checks}
    return ArtifactMetadata(
        arch="adopted", arch_kwargs={}, class_names=classes, palette=_palette(classes), mean=config.mean,
        std=config.std, mpp=float(config.mpp), patch_size=config.patch, precision="fp16" if dtype == "float16" else
        "fp32", opset=_opset(model), input=input_name, outputs=(output,), format=ONNX_FORMAT,
        format_version=FORMAT_VERSION, has_classifier=False, size_multiple=None, params=params, io_dtype=dtype,
        normalization=NORMALIZATION, source_sha256=_sha256(config.source), cervrt_version=__version__,
        onnx_version=onnx.__version__, extra={"adopted": adopted})


def adopt(config: AdoptConfig, echo: Callable[[str], None] | None = None) -> AdoptResult:
    """Check the model in ``config.source`` and write its adopted copy to ``config.output`` (see the module
    docstring); InputError/ModelError in one line, with nothing written, when it cannot be adopted."""
    import copy

    source = _load(config.source)
    inputs = _graph_inputs(source)
    value = _pick(inputs, config.input_name, "input", "--input NAME")
    dtype = _check_input(value, config.patch, len(inputs))
    output = _pick(list(source.graph.output), config.output_name, "output", "--output-name NAME")
    if not os.access(config.output.parent if str(config.output.parent) else ".", os.W_OK):
        raise InputError(f"cannot write {config.output}: its directory does not exist or is not writable")
    freed = _free_batch_axis(source)
    adopted = copy.deepcopy(source)
    final, added = _append_head(adopted, output, config)
    if freed:
        added.insert(0, "batch axis made dynamic (was 1)")
    checks = _check_model(source, adopted, output.name, final, config, dtype)
    metadata = _metadata(adopted, config, value.name, final, dtype, added, output.name, checks)
    attach_metadata(adopted, metadata)
    with atomic_path(config.output) as tmp:
        import onnx

        onnx.save(adopted, tmp)
    if echo is not None:
        echo(f"adopted {config.source} -> {config.output}: {len(config.final_classes)} classes "
             f"({', '.join(config.final_classes)}), patch {config.patch}, mpp {config.mpp}; "
             + (f"added {'; '.join(added)}; " if added else "")
             + f"test tile {checks['output']} probabilities, class sums within {checks['max_sum_error']:.1e}")
    return AdoptResult(config.output, metadata.to_dict(), checks)
