"""cervrt's architectures (HSP-Net, DeepLab v3+, Ensemble-A, patch classifiers) behind a registry. Needs torch.

Each registration states the architecture's capabilities (``task``, ``has_classifier``; see
:class:`~cervrt.models.registry.ModelSpec`), so callers ask ``get_spec(arch)`` instead of probing
model classes. ``model_from_checkpoint`` and ``describe_model`` (``cervrt.models.loading``) turn a
checkpoint dict (``cervrt.checkpoint``) into a model and its :class:`~cervrt.artifact.ArtifactMetadata`.
"""

from __future__ import annotations

from cervrt.models.base import SegmentationModel
from cervrt.models.classifier import PatchClassifier
from cervrt.models.deeplabv3plus import DeepLabV3Plus
from cervrt.models.ensemble import EnsembleA
from cervrt.models.hspnet import HSPNet
from cervrt.models.loading import describe_model, model_from_checkpoint
from cervrt.models.registry import ModelSpec, create_model, get_spec, list_models, register_model
from cervrt.models.weights import load_encoder_weights
from cervrt.models.wsss import WSSSClassifier, WSSSSegmenter

__all__ = [
    "DeepLabV3Plus",
    "EnsembleA",
    "HSPNet",
    "ModelSpec",
    "PatchClassifier",
    "SegmentationModel",
    "WSSSClassifier",
    "WSSSSegmenter",
    "create_model",
    "describe_model",
    "get_spec",
    "list_models",
    "load_encoder_weights",
    "model_from_checkpoint",
    "register_model",
]

_ENCODERS = ("resnet34", "resnet101")

register_model("hspnet", {"encoder": _ENCODERS}, {"encoder": "resnet101"},
               "HSP-Net (V-HSP + H-HSP with DS-Blocks) on a ResNet encoder")(HSPNet)
register_model("deeplabv3plus", {"encoder": _ENCODERS}, {"encoder": "resnet101"},
               "DeepLab v3+ (output stride 16, ASPP, decoder) baseline")(DeepLabV3Plus)
register_model("ensemble_a", {"encoder": _ENCODERS}, {"encoder": "resnet101"},
               "DeepLab v3+ with the assisted patch classifier at point A (MTCHI ensemble)",
               has_classifier=True)(EnsembleA)
register_model("classifier", {"encoder": _ENCODERS}, {"encoder": "resnet101"},
               "ResNet patch classifier over the 4 foreground classes (pseudo-labeling's M)",
               task="classification")(PatchClassifier)
register_model("wsss_seg", {"encoder": _ENCODERS, "cls_encoder": _ENCODERS},
               {"encoder": "resnet101", "cls_encoder": "resnet101"},
               "WSSS: HSP-Net trained on multi-layer pseudo masks plus the PDA patch classifier (gate)",
               has_classifier=True)(WSSSSegmenter)
register_model("wsss_cls", {"encoder": _ENCODERS}, {"encoder": "resnet34"},
               "WSSS phase 1: multi-label PDA patch classifier (trained by `cervrt wsss train-cls`)",
               task="classification", trained_by="wsss train-cls")(WSSSClassifier)
