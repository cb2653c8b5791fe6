"""Weakly supervised segmentation from patch-level labels (Han et al., multi-layer pseudo-supervision).

Three resumable stages, each a ``cervrt wsss`` command:

1. :func:`~cervrt.train.wsss.classify.train_classifier` -- multi-label patch classifier with
   progressive dropout attention (``train-cls``);
2. :func:`~cervrt.train.wsss.cam.generate_pseudo_masks` -- Grad-CAM pseudo masks from three layers
   (``pseudo-masks``);
3. :func:`~cervrt.train.wsss.segment.train_segmenter` -- HSP-Net on the three masks with the
   0.2/0.2/0.6 loss, assembled with the classifier into a gated ``wsss_seg`` artifact (``train-seg``).

Needs torch (``pip install "cervrt[train]"``).
"""

from __future__ import annotations

from cervrt.train.wsss.cam import PseudoMaskConfig, generate_pseudo_masks, grad_cams, pseudo_mask
from cervrt.train.wsss.classify import ClassifierConfig, train_classifier
from cervrt.train.wsss.segment import MultiLayerPseudoLoss, SegmenterConfig, assemble_wsss, gated, train_segmenter

__all__ = [
    "ClassifierConfig",
    "MultiLayerPseudoLoss",
    "PseudoMaskConfig",
    "SegmenterConfig",
    "assemble_wsss",
    "gated",
    "generate_pseudo_masks",
    "grad_cams",
    "pseudo_mask",
    "train_classifier",
    "train_segmenter",
]
