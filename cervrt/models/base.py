"""What every cervrt segmentation model offers beyond ``forward``.

``forward(x)`` returns the segmentation logits (N, classes, H, W); a model with a patch classifier
(``has_classifier``) returns ``(logits, class_logits)`` with class logits (N, classes - 1) over the
foreground classes. ``outputs`` gives both uniformly and ``predict_proba`` turns them into what the
exported graph and the runtime consume.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SegmentationModel"]


class SegmentationModel(nn.Module):
    """Base class: subclasses implement ``forward`` and set ``has_classifier``."""

    has_classifier: bool = False
    #: Minimum input side multiple (all encoders reduce by 32).
    size_multiple: int = 32

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(segmentation logits, class logits or None)."""
        out = self(x)
        if isinstance(out, tuple):
            return out[0], out[1]
        return out, None

    def predict_proba(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Softmax probabilities (N, classes, H, W) and patch class probabilities or None.

        Models with a patch classifier apply it here (see the subclass's ``combine``).
        """
        logits, class_logits = self.outputs(x)
        probs = torch.softmax(logits.float(), dim=1)
        if class_logits is None:
            return probs, None
        return self.combine(probs, class_logits.float())

    def combine(self, probs: torch.Tensor, class_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
