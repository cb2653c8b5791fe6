"""WSSS models (Han et al., multi-layer pseudo-supervision): the PDA patch classifier and the gated segmenter.

Phase 1 trains :class:`WSSSClassifier`, a multi-label patch classifier (ResNet encoder, global average
pooling, a bias-free 1x1 layer to the four foreground classes) with progressive dropout attention
(PDA) on its last feature map during training only. As in the authors' published code: class
activation maps ``M_k = ReLU(w_k . features)``, values above ``mu * max(M_k)`` zeroed, attention
``A = mean_k`` of the dropped maps, features multiplied by ``A``. The schedule (:class:`PDASchedule`)
keeps PDA off for epochs 1-3 and from epoch 4 uses ``mu = max(floor, decay ** (epoch - 3))``.

The classifier's encoder runs at output stride 16 (layer4 dilated), so its last CAM is twice as
fine as a plain ResNet's; the paper's ResNet-38 runs at 8, which cervrt's encoders do not offer.

The deployed artifact, :class:`WSSSSegmenter` (registered as ``wsss_seg``), is the phase-2
HSP-Net plus the phase-1 classifier. ``predict_proba`` returns the segmentation probabilities
unchanged and the classifier's sigmoid probabilities over the foreground classes; the runtime
applies the classification gate (:func:`apply_gate`, epsilon from the artifact's ``gate_epsilon``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cervrt.constants import GATE_EPSILON
from cervrt.errors import CervrtError
from cervrt.models.base import SegmentationModel
from cervrt.models.hspnet import HSPNet
from cervrt.models.resnet import build_encoder

__all__ = ["CAM_LAYERS", "PDASchedule", "WSSSClassifier", "WSSSSegmenter", "apply_gate", "dropout_attention"]

#: Encoder stages Grad-CAM reads (the paper's b4_3, b5_2 and bn7 of ResNet-38 map onto these).
CAM_LAYERS: tuple[str, ...] = ("layer2", "layer3", "layer4")


@dataclass(frozen=True)
class PDASchedule:
    """Progressive dropout attention: off before ``start_epoch``, then ``mu = max(floor, decay ** k)``.

    ``k = epoch - start_epoch + 1`` for 1-based epochs, so the first PDA epoch already drops above
    ``decay * max``. Defaults: the authors' code (decay 0.98; the paper says 0.985), floor 0.65,
    start at the 4th epoch. The floor is a clamp, as in the paper's Eq. 11.
    """

    start_epoch: int = 4
    decay: float = 0.98
    floor: float = 0.65

    def __post_init__(self) -> None:
        if not isinstance(self.start_epoch, int) or self.start_epoch < 1:
            raise CervrtError(f"PDA start epoch must be an integer of at least 1, got {self.start_epoch!r}")
        if not 0.0 < self.decay <= 1.0:
            raise CervrtError(f"PDA decay must be in (0, 1], got {self.decay}")
        if not 0.0 < self.floor <= 1.0:
            raise CervrtError(f"PDA floor must be in (0, 1], got {self.floor}")

    def mu(self, epoch: int) -> float | None:
        """The dropout coefficient of 1-based ``epoch``, or None while PDA is off."""
        if epoch < self.start_epoch:
            return None
        return max(self.floor, self.decay ** (epoch - self.start_epoch + 1))


def dropout_attention(features: torch.Tensor, weight: torch.Tensor, mu: float) -> torch.Tensor:
    """Features (N, C, H, W) times the dropout attention built from class weights (K, C[, 1, 1]).

    ``M_k = ReLU(w_k . features)``; values above ``mu * max(M_k)`` (per image and class) are zeroed;
    ``A = mean_k`` of the dropped maps; returns ``features * A``.
    """
    cams = F.relu(torch.einsum("nchw,kc->nkhw", features, weight.flatten(1)))
    limit = mu * cams.amax(dim=(2, 3), keepdim=True)
    dropped = torch.where(cams > limit, torch.zeros_like(cams), cams)
    return features * dropped.mean(dim=1, keepdim=True)


class WSSSClassifier(nn.Module):
    """Multi-label patch classifier; ``forward`` gives logits (N, num_classes - 1), one per foreground class."""

    def __init__(self, encoder: str = "resnet34", num_classes: int = 5) -> None:
        super().__init__()
        self.encoder = build_encoder(encoder, output_stride=16)
        self.fc = nn.Conv2d(self.encoder.out_channels[-1], num_classes - 1, 1, bias=False)
        nn.init.xavier_uniform_(self.fc.weight)
        self.pda_mu: float | None = None

    def set_pda(self, mu: float | None) -> None:
        """Switch PDA on with coefficient ``mu`` (used in training mode only) or off (None)."""
        if mu is not None and not 0.0 < mu <= 1.0:
            raise CervrtError(f"the PDA coefficient must be in (0, 1], got {mu}")
        self.pda_mu = mu

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The encoder stages by name (layer1..layer4)."""
        return dict(zip(("layer1", "layer2", "layer3", "layer4"), self.encoder(x), strict=True))

    def head(self, last: torch.Tensor) -> torch.Tensor:
        """Logits from the last feature map: PDA (training only), global average pool, 1x1 layer."""
        if self.training and self.pda_mu is not None:
            last = dropout_attention(last, self.fc.weight, self.pda_mu)
        return self.fc(last.mean(dim=(2, 3), keepdim=True)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[-1])


def apply_gate(probs: torch.Tensor, class_probs: torch.Tensor, epsilon: float = GATE_EPSILON) -> torch.Tensor:
    """The classification gate: foreground channel k of a patch is zeroed when ``class_probs[k - 1] <= epsilon``.

    ``probs`` (N, C, H, W), ``class_probs`` (N, C - 1). This is the reference the runtime mirrors.
    """
    if not 0.0 <= epsilon < 1.0 or math.isnan(epsilon):
        raise CervrtError(f"the gate epsilon must be in [0, 1), got {epsilon}")
    open_ = (class_probs > epsilon).to(probs.dtype)
    keep = torch.cat([torch.ones_like(open_[:, :1]), open_], dim=1)
    return probs * keep[:, :, None, None]


class WSSSSegmenter(SegmentationModel):
    """The deployed WSSS model: phase-2 HSP-Net (``segmenter``) plus the phase-1 classifier (``classifier``)."""

    has_classifier = True

    def __init__(self, encoder: str = "resnet34", cls_encoder: str = "resnet34", num_classes: int = 5) -> None:
        super().__init__()
        self.segmenter = HSPNet(encoder=encoder, num_classes=num_classes)
        self.classifier = WSSSClassifier(encoder=cls_encoder, num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.segmenter(x), self.classifier(x)

    def combine(self, probs: torch.Tensor, class_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Segmentation probabilities unchanged; class probabilities by sigmoid (multi-label)."""
        return probs, torch.sigmoid(class_logits)
