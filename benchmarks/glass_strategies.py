"""The three glass strategies of ``cervrt.glass`` against the synthetic truth, and beside each other on
real H&E: which one suits which method?

On ``cervrt synth`` images the truth of glass is known exactly (no stain: haematoxylin and eosin
densities both zero), so each strategy gets precision, recall and IoU of glass, and the share of
epithelium (any grade) it calls glass -- the error that costs most: a pseudo mask or a tissue mask
loses graded pixels. Regions are drawn at full size (400 px) and at the learning benchmark's 128 px.
On the real SVS (no truth) the strategies' glass shares and pairwise agreement on its thumbnail are
printed.

    python benchmarks/glass_strategies.py [--regions 48] [--svs /work/shared/data/tcga-cr-7395-01a-01-ts1.svs]

Writes benchmarks/results/glass-strategies.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

import numpy as np

from cervrt._io import write_json
from cervrt.glass import GLASS_STRATEGIES, glass_strategy

RESULTS = Path(__file__).resolve().parent / "results"
#: Where each strategy is used (module docstring of cervrt.glass).
USED_BY = {"otsu_saturation": "runtime tissue mask (slide thumbnails)",
           "near_white": "pseudo-labelling's tissue share of a window",
           "bright_unsaturated": "WSSS pseudo masks and patch labels"}


def _synthetic(regions: int, size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rgb, truth glass, truth epithelium) of ``regions`` synthetic regions of ``size`` px."""
    from cervrt.synth._tissue import random_stain, render, tissue

    rng, out = np.random.default_rng(seed), []
    for _ in range(regions):
        stain = random_stain(rng)
        grades = tuple(int(g) for g in rng.choice([1, 2, 3, 4], size=int(rng.integers(1, 4)), replace=False))
        hema, eosin, label = tissue(rng, size, size, grades)
        out.append((render(rng, hema, eosin, stain), (hema + eosin) < 1e-3, label > 0))
    return out


def _scores(images: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, dict[str, float]]:
    scores = {}
    for name in GLASS_STRATEGIES:
        strategy = glass_strategy(name)
        tp = fp = fn = epi_glass = epi = 0
        for rgb, truth, epithelium in images:
            pred = strategy.glass(rgb)
            tp, fp = tp + int((pred & truth).sum()), fp + int((pred & ~truth).sum())
            fn += int((~pred & truth).sum())
            epi_glass, epi = epi_glass + int((pred & epithelium).sum()), epi + int(epithelium.sum())
        scores[name] = {"precision": tp / max(1, tp + fp), "recall": tp / max(1, tp + fn),
                        "iou": tp / max(1, tp + fp + fn), "epithelium_called_glass": epi_glass / max(1, epi)}
    return scores


def _real(svs: Path) -> dict[str, Any]:
    from cervrt.constants import MTCHI_MPP
    from cervrt.runtime.readers import open_slide

    with open_slide(svs, MTCHI_MPP) as slide:
        rgb = slide.thumbnail(2048)
    masks = {name: glass_strategy(name).glass(rgb) for name in GLASS_STRATEGIES}
    return {"slide": svs.name, "thumbnail": [rgb.shape[1], rgb.shape[0]],
            "glass_share": {k: float(m.mean()) for k, m in masks.items()},
            "agreement": {f"{a} ~ {b}": float((masks[a] == masks[b]).mean())
                          for a, b in itertools.combinations(masks, 2)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regions", type=int, default=48)
    parser.add_argument("--svs", type=Path, default=Path("/work/shared/data/tcga-cr-7395-01a-01-ts1.svs"))
    args = parser.parse_args()
    result: dict[str, Any] = {"synthetic": {str(size): _scores(_synthetic(args.regions, size, seed=size))
                                            for size in (400, 128)}, "used_by": USED_BY}
    if args.svs.is_file():
        result["real"] = _real(args.svs)
    lines = [f"`python benchmarks/glass_strategies.py --regions {args.regions}`", "",
             "| strategy | used by | region px | glass precision | glass recall | glass IoU "
             "| epithelium called glass |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for size, scores in result["synthetic"].items():
        for name, s in scores.items():
            lines.append(f"| {name} | {USED_BY[name]} | {size} | {s['precision']:.3f} | {s['recall']:.3f} | "
                         f"{s['iou']:.3f} | {s['epithelium_called_glass']:.4f} |")
    if "real" in result:
        real = result["real"]
        lines += ["", f"{real['slide']} (thumbnail {real['thumbnail'][0]} x {real['thumbnail'][1]}): glass share "
                  + ", ".join(f"{k} {v:.3f}" for k, v in real["glass_share"].items()) + "; agreement "
                  + ", ".join(f"{k} {v:.3f}" for k, v in real["agreement"].items())]
    write_json(RESULTS / "glass-strategies.json", result)
    (RESULTS / "glass-strategies.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
