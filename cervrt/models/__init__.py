"""cervrt's architectures (HSP-Net, DeepLab v3+, Ensemble-A, a patch classifier) behind a registry. Needs torch."""

from __future__ import annotations

from cervrt.models.base import SegmentationModel
from cervrt.models.classifier import PatchClassifier
from cervrt.models.deeplabv3plus import DeepLabV3Plus
from cervrt.models.ensemble import EnsembleA
from cervrt.models.hspnet import HSPNet
from cervrt.models.registry import ModelSpec, create_model, get_spec, list_models, register_model
from cervrt.models.weights import load_encoder_weights
from cervrt.models.wsss import WSSSSegmenter

__all__ = [
    "DeepLabV3Plus",
    "EnsembleA",
    "HSPNet",
    "ModelSpec",
    "PatchClassifier",
    "SegmentationModel",
    "WSSSSegmenter",
    "create_model",
    "get_spec",
    "list_models",
    "load_encoder_weights",
    "register_model",
]

_ENCODERS = ("resnet34", "resnet101")

register_model("hspnet", {"encoder": _ENCODERS}, {"encoder": "resnet101"},
               "HSP-Net (V-HSP + H-HSP with DS-Blocks) on a ResNet encoder")(HSPNet)
register_model("deeplabv3plus", {"encoder": _ENCODERS}, {"encoder": "resnet101"},
               "DeepLab v3+ (output stride 16, ASPP, decoder) baseline")(DeepLabV3Plus)
register_model("ensemble_a", {"encoder": _ENCODERS}, {"encoder": "resnet101"},
               "DeepLab v3+ with the assisted patch classifier at point A (MTCHI ensemble)")(EnsembleA)
register_model("classifier", {"encoder": _ENCODERS}, {"encoder": "resnet101"},
               "ResNet patch classifier over the 4 foreground classes (pseudo-labeling's M)")(PatchClassifier)
register_model("wsss_seg", {"encoder": _ENCODERS, "cls_encoder": _ENCODERS},
               {"encoder": "resnet101", "cls_encoder": "resnet101"},
               "WSSS: HSP-Net trained on multi-layer pseudo masks plus the PDA patch classifier (gate)")(WSSSSegmenter)
