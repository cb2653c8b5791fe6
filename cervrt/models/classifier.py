"""A ResNet patch classifier: the feature extractor M of MTCHI Algorithm 1 (pseudo-labeling).

The MTCHI paper's classification baselines (Sec. IV-A, Table I) are ImageNet networks with their
last layer replaced: here a cervrt ResNet encoder (plain, output stride 32), global average pooling
and one fully connected layer to the four foreground classes. Logit ``k`` stands for class
``k + 1`` (0 normal, 1 CIN 1, 2 CIN 2, 3 CIN 3), matching the patch labels of
:class:`cervrt.train.data.PatchDataset` (a patch's label is its largest foreground class, SPEC).
With the registry's ``num_classes=5`` (background included) the head has ``num_classes - 1``
outputs. ResNet-34: 21.29M parameters, ResNet-101: 42.51M, as the paper's Table I.

It is not a segmentation model: it has no ``predict_proba`` for the runtime and is not exported.
"""

from __future__ import annotations

import torch
from torch import nn

from cervrt.errors import CervrtError
from cervrt.models.resnet import build_encoder

__all__ = ["PatchClassifier"]


class PatchClassifier(nn.Module):
    """ResNet encoder + global average pool + FC; ``forward`` returns class logits (N, num_classes - 1)."""

    #: What the training loop and the pseudo-labeler ask of a model: patch logits via ``classify``.
    is_classifier = True
    #: No segmentation output to gate: exporters and engines see a model without an assisted classifier.
    has_classifier = False
    size_multiple: int = 32

    def __init__(self, encoder: str = "resnet101", num_classes: int = 5) -> None:
        super().__init__()
        self.encoder = build_encoder(encoder, output_stride=32)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(self.encoder.out_channels[-1], num_classes - 1)
        )

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Patch class logits (N, num_classes - 1) over the foreground classes."""
        return self.head(self.encoder(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(x)

    def predict_proba(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise CervrtError("a patch classifier predicts no masks: use it with `cervrt pseudo-label`, "
                          "or train a segmentation architecture (hspnet, deeplabv3plus, ensemble_a) for inference")
