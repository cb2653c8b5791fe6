"""The training sub-package: datasets and patching, synthetic data, losses, the loop, evaluation.

Everything here except :mod:`cervrt.train.synth` and the MTCHI reader needs torch (``pip install
"cervrt[train]"``); the runtime never imports this package.
"""

from __future__ import annotations

__all__: list[str] = []
