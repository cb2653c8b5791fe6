"""WSSS pseudo masks: Grad-CAM from three layers of the phase-1 classifier, written as PNGs.

Grad-CAM (Selvaraju et al.): for class k and a feature map A (C, h, w), weights ``a_c = mean_hw
d logit_k / d A_c`` and map ``ReLU(sum_c a_c A_c)``, bilinearly up-sampled to the patch. Layers
(:data:`cervrt.models.wsss.CAM_LAYERS`): layer2 (x/8), layer3 (x/16) and layer4 (x/16, the map PDA
trains), the three semantic stages of the encoder and the counterparts of the paper's b4_3, b5_2
and bn7; layer1 is left out, its maps follow colour and edges rather than the grade.

Each present class's map is min-max normalised over the patch (so a weak but present class is not
drowned by a strong one; the authors normalise all four maps jointly), absent classes are zeroed.
Background (class 0) is glass (bright, unsaturated pixels: the paper's colour-thresholded white
regions) and every pixel where no present class reaches ``bg_threshold``. The default 0 keeps the
paper's glass-only background. Measured on ``cervrt synth`` (``benchmarks/learning.py wsss``), 0.3
removed epithelium as readily as stroma: fused mIoU 0.414, against 0.723 at 0 and 0.640 for painting
every tissue pixel with the patch's label. The rest takes the argmax.
Re-running skips patches whose files all exist; every file is written atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cervrt._io import ensure_writable_dir, write_json
from cervrt.checkpoint import file_sha256, load_checkpoint
from cervrt.constants import NUM_CLASSES
from cervrt.errors import CervrtError
from cervrt.glass import GlassThreshold
from cervrt.imageio import write_png
from cervrt.metrics import MetricAccumulator
from cervrt.models.wsss import CAM_LAYERS
from cervrt.train.data import read_mask
from cervrt.train.tensors import resolve_device, to_model_input
from cervrt.train.wsss.classify import classifier_from_checkpoint
from cervrt.train.wsss.data import FUSED_DIR, MASK_DIRS, WeakSource, load_weak_source

__all__ = ["LAYER_WEIGHTS", "CamScorer", "PseudoMaskConfig", "fuse_layers", "generate_pseudo_masks", "grad_cams",
           "normalise_cams", "pseudo_mask"]

#: Multi-layer pseudo-supervision weights (paper Eq. 13), in CAM_LAYERS order.
LAYER_WEIGHTS: tuple[float, ...] = (0.2, 0.2, 0.6)


@dataclass(frozen=True)
class PseudoMaskConfig:
    """Settings of ``cervrt wsss pseudo-masks``; patch geometry defaults to the classifier run's."""

    classifier: str
    data: str
    out: str
    labels: str | None = None
    patch_size: int | None = None
    stride: int | None = None
    min_foreground: float | None = None
    bg_threshold: float = 0.0
    glass: GlassThreshold = field(default_factory=GlassThreshold)
    batch_size: int = 8
    device: str = "auto"

    def check(self) -> None:
        if not 0.0 <= self.bg_threshold < 1.0:
            raise CervrtError(f"bg-threshold must be in [0, 1), got {self.bg_threshold}")
        if self.batch_size < 1:
            raise CervrtError(f"batch-size must be at least 1, got {self.batch_size}")


def grad_cams(features: Sequence[torch.Tensor], logits: torch.Tensor) -> list[torch.Tensor]:
    """Grad-CAM of every logit column on every feature map: one (N, K, h, w) tensor per map.

    ``features`` must be in the graph that computed ``logits`` (N, K); images of a batch are
    independent (eval mode), so one backward pass per class serves the whole batch.
    """
    maps: list[list[torch.Tensor]] = [[] for _ in features]
    for k in range(logits.shape[1]):
        grads = torch.autograd.grad(logits[:, k].sum(), list(features), retain_graph=True)
        for per_layer, act, grad in zip(maps, features, grads, strict=True):
            per_layer.append(F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1)))
    return [torch.stack(per_layer, dim=1) for per_layer in maps]


def normalise_cams(cams: torch.Tensor, size: int) -> torch.Tensor:
    """Up-sample (N, K, h, w) maps to ``size`` (bilinear) and min-max normalise each to 0..1 (flat -> 0)."""
    cams = F.interpolate(cams, size=(size, size), mode="bilinear", align_corners=False)
    low = cams.amin(dim=(2, 3), keepdim=True)
    span = cams.amax(dim=(2, 3), keepdim=True) - low
    return torch.where(span > 0, (cams - low) / span.clamp_min(1e-12), torch.zeros_like(cams))


def pseudo_mask(scores: np.ndarray, labels: Sequence[int], glass: np.ndarray, bg_threshold: float) -> np.ndarray:
    """uint8 (H, W) mask from normalised scores (K, H, W) of classes 1..K: absent classes zeroed,
    background where glass or where no present class reaches ``bg_threshold``, else the argmax."""
    present = np.zeros(scores.shape[0], bool)
    present[[c - 1 for c in labels]] = True
    kept = np.where(present[:, None, None], scores, 0.0)
    mask = (kept.argmax(axis=0) + 1).astype(np.uint8)
    mask[(kept.max(axis=0) < bg_threshold) | glass] = 0
    return mask


_OUTPUTS = ("images", *MASK_DIRS.values(), FUSED_DIR)


def _done(out: Path, name: str) -> bool:
    return all((out / sub / f"{name}.png").is_file() for sub in _OUTPUTS)


class CamScorer:
    """A phase-1 classifier checkpoint, loaded to turn batches of patches into normalised CAMs."""

    def __init__(self, ckpt: dict[str, Any], device: str = "auto") -> None:
        self.device = resolve_device(device)
        self.model = classifier_from_checkpoint(ckpt).to(self.device)
        self.mean, self.std = ckpt["mean"], ckpt["std"]

    def scores(self, patches: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Per layer float32 (N, 4, P, P) normalised Grad-CAMs of a uint8 (N, P, P, 3) batch, and the
        classifier's probabilities (N, 4) of classes 1..4."""
        x = to_model_input(patches, self.mean, self.std, self.device)
        with torch.enable_grad():
            feats = self.model.features(x)
            logits = self.model.head(feats[CAM_LAYERS[-1]])
            cams = grad_cams([feats[layer] for layer in CAM_LAYERS], logits)
        probs = torch.sigmoid(logits.detach()).cpu().numpy()
        return [normalise_cams(c.detach(), patches.shape[1]).cpu().numpy() for c in cams], probs


def fuse_layers(layer_scores: Sequence[np.ndarray]) -> np.ndarray:
    """The CAMs of the three layers weighted as the loss weighs their masks (:data:`LAYER_WEIGHTS`)."""
    return sum(w * s for w, s in zip(LAYER_WEIGHTS, layer_scores, strict=True))


def _write_sample(out: Path, name: str, rgb: np.ndarray, layer_scores: list[np.ndarray], labels: Sequence[int],
                  glass: np.ndarray, bg_threshold: float) -> None:
    fused = fuse_layers(layer_scores)
    for layer, scores in zip(CAM_LAYERS, layer_scores, strict=True):
        write_png(out / MASK_DIRS[layer] / f"{name}.png", pseudo_mask(scores, labels, glass, bg_threshold))
    write_png(out / FUSED_DIR / f"{name}.png", pseudo_mask(fused, labels, glass, bg_threshold))
    write_png(out / "images" / f"{name}.png", rgb)


def _measure(source: WeakSource, out: Path) -> dict[str, Any] | None:
    """mIoU etc. of each layer's and the fused pseudo masks against the true masks, when there are any."""
    if any(m is None for m in source.masks):
        return None
    accs = {key: MetricAccumulator(NUM_CLASSES) for key in (*CAM_LAYERS, "fused")}
    dirs = {**MASK_DIRS, "fused": FUSED_DIR}
    for sample in source.samples:
        truth, name = source.truth(sample), source.name(sample)
        for key, acc in accs.items():
            acc.update(read_mask(out / dirs[key] / f"{name}.png"), truth)
    return {key: acc.compute() for key, acc in accs.items()}


def _resolve(config: PseudoMaskConfig, ckpt: dict[str, Any]) -> PseudoMaskConfig:
    trained = ckpt.get("train_config", {})
    return PseudoMaskConfig(**{**asdict(config), "glass": config.glass,
                               "patch_size": config.patch_size or int(ckpt["patch_size"]),
                               "stride": config.stride or int(trained.get("stride", ckpt["patch_size"])),
                               "min_foreground": config.min_foreground or float(trained.get("min_foreground", 0.2))})


def generate_pseudo_masks(config: PseudoMaskConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the pseudo masks of every phase-1 patch of ``config.data``; returns ``OUT/pseudo.json``'s contents."""
    config.check()
    ckpt = load_checkpoint(config.classifier)
    config = _resolve(config, ckpt)
    source = load_weak_source(config.data, config.labels, patch=config.patch_size, stride=config.stride,
                              min_foreground=config.min_foreground,
                              label_min_share=float(ckpt.get("train_config", {}).get("label_min_share", 0.01)),
                              glass=config.glass)
    out = ensure_writable_dir(config.out)
    for sub in _OUTPUTS:
        ensure_writable_dir(out / sub)
    todo = [s for s in source.samples if not _done(out, source.name(s))]
    log(f"pseudo masks of {len(source.samples)} patches of {config.patch_size} px from {config.data} "
        f"({len(source.samples) - len(todo)} already written); Grad-CAM layers {', '.join(CAM_LAYERS)}")
    scorer = CamScorer(ckpt, config.device)
    with tqdm(total=len(todo), desc="pseudo masks", unit="patch") as bar:
        for i in range(0, len(todo), config.batch_size):
            batch = todo[i : i + config.batch_size]
            patches = np.stack([source.crop(s) for s in batch])
            layer_scores, _ = scorer.scores(patches)
            for j, sample in enumerate(batch):
                _write_sample(out, source.name(sample), patches[j], [s[j] for s in layer_scores], sample.labels,
                              config.glass.glass(patches[j]), config.bg_threshold)
            bar.update(len(batch))
    summary = {"classifier": str(config.classifier), "classifier_sha256": file_sha256(config.classifier),
               "data": str(config.data), "labels": config.labels, "patches": len(source.samples),
               "patch_size": config.patch_size, "stride": config.stride, "layers": list(CAM_LAYERS),
               "mask_dirs": {**MASK_DIRS, "fused": FUSED_DIR}, "layer_weights": list(LAYER_WEIGHTS),
               "bg_threshold": config.bg_threshold, "glass": asdict(config.glass),
               "truth_metrics": _measure(source, out)}
    write_json(out / "pseudo.json", summary)
    return summary
