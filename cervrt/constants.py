"""Class coding, display palette and normalisation shared by training, export and the runtime.

Everything here is plain Python so that importing it costs nothing (no numpy, no torch).
"""

from __future__ import annotations

__all__ = [
    "CLASS_NAMES",
    "GATE_EPSILON",
    "GAUSSIAN_SIGMA_SCALE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MIN_FOREGROUND",
    "MTCHI_MPP",
    "NUM_CLASSES",
    "PALETTE",
    "PATCH_SIZE",
    "PATCH_STRIDE",
]

#: MTCHI coding: 0 background, 1 normal, 2 CIN 1, 3 CIN 2, 4 CIN 3.
CLASS_NAMES: tuple[str, ...] = ("background", "normal", "CIN 1", "CIN 2", "CIN 3")
NUM_CLASSES = len(CLASS_NAMES)

#: Display palette (HSP-Net Fig. 4): background black, normal white, CIN 1 green, CIN 2 blue, CIN 3 red. RGB.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (255, 255, 255),
    (0, 255, 0),
    (0, 0, 255),
    (255, 0, 0),
)

#: ImageNet statistics (RGB, on 0..1 pixels): the encoders start from ImageNet weights.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Microns per pixel of MTCHI regions at 10x (0.226 um at 40x down-sampled 4 times).
MTCHI_MPP = 0.904

#: Papers' patch size, stride and foreground threshold for training patches.
PATCH_SIZE = 400
PATCH_STRIDE = 100
MIN_FOREGROUND = 0.2

#: Gaussian blending: sigma = GAUSSIAN_SIGMA_SCALE * patch size.
GAUSSIAN_SIGMA_SCALE = 0.125

#: Classification gate (WSSS paper): a class whose patch probability is <= epsilon is zeroed.
GATE_EPSILON = 0.1
