"""The training sub-package: datasets and patching, losses, the loop, evaluation.

Everything here except the MTCHI reader needs torch (``pip install
"cervrt[train]"``); the runtime never imports this package.
"""

from __future__ import annotations

__all__: list[str] = []
