"""A plain ``state_dict`` of a cervrt architecture trained elsewhere -> a cervrt checkpoint ready to export.

    cervrt export weights.pth --arch hspnet --encoder resnet34 --classes 5 [--patch-size 400] [--mpp 0.904]

The file is read with ``torch.load(weights_only=True)`` (no code in it can run). It may be the
state_dict itself, or a dict holding it under ``state_dict`` or ``model`` (what training scripts
often save); a ``module.`` prefix (``DataParallel``) is dropped. The weights must fit the
architecture exactly (strict loading): otherwise a one-line ModelError counts the missing, unexpected
and mis-shaped keys and names the first of each. The checkpoint is written beside the ONNX file it
will be exported to (``NAME.pt`` for ``NAME.onnx``), so that the export's ``source_checkpoint`` is a
file that exists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cervrt.checkpoint import FORMAT, build_checkpoint, safe_torch_load, save_checkpoint
from cervrt.constants import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD, MTCHI_MPP, NUM_CLASSES, PALETTE, PATCH_SIZE
from cervrt.errors import InputError, ModelError

__all__ = ["checkpoint_from_state_dict", "class_names_for", "convert_state_dict"]

_COLOURS = ((255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 128, 0), (128, 0, 255), (0, 128, 128))


def class_names_for(classes: int | str | Sequence[str]) -> tuple[str, ...]:
    """``5`` -> cervrt's grades; another count -> background, class 1, ...; names (or "a,b,c") as given."""
    if isinstance(classes, str) and not classes.strip().isdigit():
        names = tuple(n.strip() for n in classes.split(","))
    elif isinstance(classes, (str, int)) and not isinstance(classes, bool):
        count = int(classes)
        if count < 2:
            raise InputError(f"--classes must be at least 2 (background and one class), got {count}")
        names = CLASS_NAMES if count == NUM_CLASSES else ("background", *(f"class {k}" for k in range(1, count)))
    else:
        names = tuple(str(n) for n in classes)
    if len(names) < 2 or any(not n for n in names) or len(set(names)) != len(names):
        raise InputError(f"--classes takes a class count or 2+ distinct comma-separated names, got {classes!r}")
    return names


def _palette(names: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    if names == CLASS_NAMES:
        return PALETTE
    return tuple((PALETTE + _COLOURS)[k % (len(PALETTE) + len(_COLOURS))] for k in range(len(names)))


def _tensors(loaded: Any, source: str) -> dict[str, Any]:
    """The state_dict inside what torch.load returned."""
    import torch

    if isinstance(loaded, Mapping) and loaded.get("format") == FORMAT:
        raise InputError(f"{source} is already a cervrt checkpoint: export it without --arch")
    for key in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
            break
    if not isinstance(loaded, Mapping) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ModelError(f"{source} is not a state_dict (a dict of tensors, or one under 'state_dict' or 'model')")
    prefix = "module."
    if all(str(k).startswith(prefix) for k in loaded):
        loaded = {str(k)[len(prefix):]: v for k, v in loaded.items()}
    return dict(loaded)


def _mismatch(model: Any, weights: dict[str, Any], arch: str) -> str | None:
    """None when ``weights`` fit ``model`` exactly, else one sentence counting what does not."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    parts = [f"{len(found)} {what} (first {found[0]})" for what, found in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if found]
    return f"the weights do not fit {arch}: {', '.join(parts)}; check --arch, --encoder and --classes"


def convert_state_dict(path: str | os.PathLike[str], arch: str, *, encoder: str | None = None,
                       classes: int | str | Sequence[str] = NUM_CLASSES, patch_size: int = PATCH_SIZE,
                       mpp: float = MTCHI_MPP, mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD) -> dict[str, Any]:
    """The cervrt checkpoint dict of the plain state_dict in ``path`` for architecture ``arch``."""
    from cervrt.models import create_model, get_spec

    names = class_names_for(classes)
    spec = get_spec(arch)
    if spec.is_classifier:
        raise InputError(f"{arch} is a patch classifier: cervrt exports segmentation models only")
    kwargs = {} if encoder is None else {"encoder": encoder}
    full = spec.resolve({**kwargs, "num_classes": len(names)})
    weights = _tensors(safe_torch_load(path), str(path))
    model = create_model(arch, **full)
    problem = _mismatch(model, weights, arch)
    if problem is not None:
        raise ModelError(f"{path}: {problem}")
    model.load_state_dict(weights, strict=True)
    arch_kwargs = {k: v for k, v in full.items() if k != "num_classes" or v != NUM_CLASSES}
    return build_checkpoint(model.eval(), arch, arch_kwargs, patch_size=int(patch_size), mpp=float(mpp),
                            mean=tuple(map(float, mean)), std=tuple(map(float, std)), class_names=names,
                            palette=_palette(names), source_state_dict=str(path))


def checkpoint_from_state_dict(path: str | os.PathLike[str], onnx_output: str | os.PathLike[str] | None,
                               arch: str, **options: Any) -> Path:
    """Convert ``path`` (see ``convert_state_dict``) and save the checkpoint beside the ONNX file to be
    written (``NAME.pt``; ``onnx_output`` None: beside the state_dict, ``STEM.cervrt.pt``); returns it."""
    source = Path(path)
    target = Path(onnx_output).with_suffix(".pt") if onnx_output else source.with_name(f"{source.stem}.cervrt.pt")
    if target.resolve() == source.resolve():
        raise InputError(f"the checkpoint would overwrite {source}: pass -o NAME.onnx in another name")
    save_checkpoint(target, convert_state_dict(source, arch, **options))
    return target
