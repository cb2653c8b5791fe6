"""Ensemble-A (MTCHI paper, Sec. IV-C): DeepLab v3+ with an assisted classification block at point A.

The block is a global average pool and a fully connected layer from the encoder output (2048) to the
four foreground classes. Training minimises segmentation CE plus patch classification CE. At
inference the foreground probabilities are multiplied by sigmoid(class scores); cervrt then
renormalises each pixel to sum to one (the argmax is unchanged) so that the fused maps remain
probabilities. ResNet-101, 5 classes: 59.35M parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from cervrt.models.deeplabv3plus import DeepLabV3Plus

__all__ = ["EnsembleA"]


class EnsembleA(DeepLabV3Plus):
    """DeepLab v3+ plus the assisted block; ``forward`` returns (seg logits, class logits)."""

    has_classifier = True

    def __init__(self, encoder: str = "resnet101", num_classes: int = 5) -> None:
        super().__init__(encoder=encoder, num_classes=num_classes)
        self.assist = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(self.encoder.out_channels[-1], num_classes - 1)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        return self.segment(features, x.shape[-2:]), self.assist(features[-1])

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits only (encoder + assisted block), for training the classification branch alone."""
        return self.assist(self.encoder(x)[-1])

    def combine(self, probs: torch.Tensor, class_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Multiply foreground probabilities by sigmoid(class scores) and renormalise per pixel."""
        class_probs = torch.sigmoid(class_logits)
        scale = torch.cat([torch.ones_like(class_probs[:, :1]), class_probs], dim=1)
        scaled = probs * scale[:, :, None, None]
        return scaled / scaled.sum(dim=1, keepdim=True).clamp_min(1e-12), class_probs
