"""The papers' parameter and FLOP figures beside cervrt's own counts (``cervrt bench --paper``).

The papers' "FLOPs" are multiply-accumulates (MACs) at a 384x384 input (SPEC, "FLOPs"). Sources:

- HSP-Net ResNet-101: 69.70M parameters, HSP-Net paper Table 5. The paper gives no FLOP figure for
  HSP-Net and no figure at all for its ResNet-34 variant (Table 4 lists its accuracy only).
- DeepLab v3+: 59.34M parameters, 49.97G FLOPs, MTCHI dataset paper Table II (the HSP-Net paper's
  Table 5 repeats 59.34M).
- Ensemble-A: 59.35M parameters, 49.97G FLOPs, MTCHI dataset paper Table II (HSP-Net Table 5: 59.35M).
- The ResNet-34 and ResNet-101 patch classifiers (MTCHI pseudo-labeling's M): 21.29M / 10.80G and
  42.51M / 23.05G, MTCHI dataset paper Table I. They check the counting convention on plain encoders.

A figure the papers do not give is ``None`` here and prints as ``--``. cervrt's counts come from
:func:`cervrt.model_info.arch_info` (torch's flop counter on the meta device: convolutions and matrix
products only), so they need torch (the ``train`` extra) but no weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["PAPER_MODELS", "PaperFigures", "format_paper_table", "paper_table", "percent_diff"]

_MISSING = "--"


@dataclass(frozen=True)
class PaperFigures:
    """One architecture as the papers print it: parameters and MACs at 384 (None = not given)."""

    label: str
    arch: str
    encoder: str | None
    params: float | None
    macs_384: float | None
    source: str


PAPER_MODELS: tuple[PaperFigures, ...] = (
    PaperFigures("HSP-Net ResNet-34", "hspnet", "resnet34", None, None, "HSP-Net paper Table 4 (no figures)"),
    PaperFigures("HSP-Net ResNet-101", "hspnet", "resnet101", 69.70e6, None, "HSP-Net paper Table 5"),
    PaperFigures("DeepLab v3+", "deeplabv3plus", None, 59.34e6, 49.97e9, "MTCHI paper Table II"),
    PaperFigures("Ensemble-A", "ensemble_a", None, 59.35e6, 49.97e9, "MTCHI paper Table II"),
    PaperFigures("ResNet-34 classifier", "classifier", "resnet34", 21.29e6, 10.80e9, "MTCHI paper Table I"),
    PaperFigures("ResNet-101 classifier", "classifier", "resnet101", 42.51e6, 23.05e9, "MTCHI paper Table I"),
)


def percent_diff(ours: float | None, paper: float | None) -> float | None:
    """(ours - paper) / paper in percent; None when either figure is missing."""
    if ours is None or paper is None or paper == 0:
        return None
    return 100.0 * (ours - paper) / paper


def _default_counter(arch: str, encoder: str | None) -> dict[str, Any]:
    from cervrt.model_info import arch_info

    return arch_info(arch, encoder)


def paper_table(counter: Callable[[str, str | None], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per paper model: the papers' figures, cervrt's counts and the differences in percent.

    ``counter(arch, encoder)`` returns a dict with ``params``, ``macs_384`` and ``macs_patch``
    (default: :func:`cervrt.model_info.arch_info`).
    """
    counter = counter or _default_counter
    rows = []
    for model in PAPER_MODELS:
        ours = counter(model.arch, model.encoder)
        rows.append({
            "model": model.label, "arch": model.arch, "encoder": model.encoder, "source": model.source,
            "paper_params": model.params, "params": int(ours["params"]),
            "params_diff_pct": percent_diff(ours["params"], model.params),
            "paper_macs_384": model.macs_384, "macs_384": int(ours["macs_384"]),
            "macs_384_diff_pct": percent_diff(ours["macs_384"], model.macs_384),
            "macs_patch": int(ours["macs_patch"]), "patch_size": int(ours.get("patch_size", 400)),
        })
    return rows


def _scaled(value: float | None, scale: float, suffix: str) -> str:
    return _MISSING if value is None or math.isnan(value) else f"{value / scale:.2f}{suffix}"


def _pct(value: float | None) -> str:
    if value is None:
        return _MISSING
    return f"{value:+.3f}%" if abs(value) < 0.01 else f"{value:+.2f}%"


def format_paper_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of :func:`paper_table` rows (a missing paper figure shows as ``--``)."""
    patch = rows[0]["patch_size"] if rows else 400
    lines = [f"| model | params (paper) | params (cervrt) | diff | MACs@384 (paper) | MACs@384 (cervrt) | diff "
             f"| MACs@{patch} (cervrt) | source |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {_scaled(r['paper_params'], 1e6, 'M')} | {_scaled(r['params'], 1e6, 'M')} "
            f"| {_pct(r['params_diff_pct'])} | {_scaled(r['paper_macs_384'], 1e9, 'G')} "
            f"| {_scaled(r['macs_384'], 1e9, 'G')} | {_pct(r['macs_384_diff_pct'])} "
            f"| {_scaled(r['macs_patch'], 1e9, 'G')} | {r['source']} |"
        )
    return "\n".join(lines)
