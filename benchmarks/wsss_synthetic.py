"""WSSS on synthetic data: pseudo-mask mIoU after phase 1 (each layer, fused) and the phase-2 model's mIoU.

Synthetic only: ``cervrt synth`` regions, patch-sized weak regions with exact image-level labels.
Runs the three ``cervrt wsss`` stages through the library, times each, evaluates the phase-2 model
with and without the classification gate on (a) the weak patches' true masks (the pixels the pseudo
masks cover) and (b) held-out pixel-annotated regions, and writes ``OUT/wsss_synthetic.json``.

    python benchmarks/wsss_synthetic.py --out /tmp/wsss-bench --weak 48 --size 64 --cls-epochs 8 --until cls
    python benchmarks/wsss_synthetic.py --out /tmp/wsss-bench --weak 48 --size 64 --seg-epochs 2 --until seg
    python benchmarks/wsss_synthetic.py --out /tmp/wsss-bench --weak 48 --size 64

Every stage is resumable, so a re-run continues where the last one stopped (``--until`` ends a run
after a stage, ``--time-limit`` bounds each training stage): on a shared CPU the stages fit in
separate runs of a few minutes each.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cervrt.checkpoint import load_checkpoint
from cervrt.models import model_from_checkpoint
from cervrt.runtime.tiling import BlendMode
from cervrt.synth import write_dataset
from cervrt.train.data import list_regions, load_region
from cervrt.train.evaluate import SlidingWindow, evaluate_regions
from cervrt.train.wsss import (
    ClassifierConfig,
    PseudoMaskConfig,
    SegmenterConfig,
    gated,
    generate_pseudo_masks,
    train_classifier,
    train_segmenter,
)


def _evaluate(ckpt: dict, root: Path, patch: int) -> dict:
    sw = SlidingWindow(patch=patch, stride=max(1, patch // 4), blend=BlendMode.GAUSSIAN, batch_size=8)
    regions = [(r.name, *load_region(r)) for r in list_regions(root)]
    plain, _ = evaluate_regions(model_from_checkpoint(ckpt), regions, sw, "cpu", progress=False)
    with_gate, _ = evaluate_regions(gated(ckpt), regions, sw, "cpu", progress=False)
    return {"regions": len(regions), "miou": plain["miou"], "dice": plain["dice"],
            "miou_gated": with_gate["miou"], "dice_gated": with_gate["dice"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--regions", type=int, default=4, help="held-out pixel-annotated regions")
    parser.add_argument("--weak", type=int, default=64, help="weak (image-level labelled) regions")
    parser.add_argument("--size", type=int, default=128, help="region side = patch size")
    parser.add_argument("--cls-epochs", type=int, default=20)
    parser.add_argument("--cls-lr", type=float, default=1e-3,
                        help="phase-1 encoder lr (from scratch: below the paper's 1e-2)")
    parser.add_argument("--seg-epochs", type=int, default=4)
    parser.add_argument("--bg-threshold", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=None, help="minutes per training stage")
    parser.add_argument("--until", choices=["cls", "pseudo", "seg", "eval"], default="eval")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    out, times = args.out, {}
    data = out / "data"
    start = time.monotonic()
    if not (data / "weak" / "labels.csv").is_file():
        write_dataset(data, regions=args.regions, size=args.size, seed=args.seed, weak_regions=args.weak,
                      progress=False)
    weak = {"data": str(data / "weak"), "labels": str(data / "weak" / "labels.csv")}
    times["synth"] = time.monotonic() - start
    start = time.monotonic()
    cls = train_classifier(ClassifierConfig(**weak, out=str(out / "cls"), epochs=args.cls_epochs, batch_size=8,
                                            lr=args.cls_lr, patch_size=args.size, stride=args.size, device="cpu",
                                            seed=args.seed, time_limit_minutes=args.time_limit))
    times["train_cls"] = time.monotonic() - start
    if args.until == "cls":
        return print(json.dumps({k: round(v / 60, 2) for k, v in times.items()}))
    start = time.monotonic()
    summary = generate_pseudo_masks(PseudoMaskConfig(classifier=str(cls), **weak, out=str(out / "pm"),
                                                     bg_threshold=args.bg_threshold, device="cpu"))
    times["pseudo_masks"] = time.monotonic() - start
    if args.until == "pseudo":
        return print(json.dumps({"minutes": {k: round(v / 60, 2) for k, v in times.items()},
                                 "pseudo_masks": summary["truth_metrics"]}, indent=2))
    start = time.monotonic()
    artifact = train_segmenter(SegmenterConfig(pseudo=str(out / "pm"), classifier=str(cls), out=str(out / "seg"),
                                               epochs=args.seg_epochs, batch_size=8, device="cpu", seed=args.seed,
                                               time_limit_minutes=args.time_limit))
    times["train_seg"] = time.monotonic() - start
    if args.until == "seg":
        return print(json.dumps({k: round(v / 60, 2) for k, v in times.items()}))
    start = time.monotonic()
    ckpt = load_checkpoint(artifact)
    result = {
        "synthetic": True, "args": {k: str(v) for k, v in vars(args).items()},
        "patches": summary["patches"],
        "pseudo_masks": {k: {"miou": v["miou"], "dice": v["dice"]} for k, v in summary["truth_metrics"].items()},
        "phase2_on_weak_patches": _evaluate(ckpt, data / "weak", args.size),
        "phase2_on_heldout_regions": _evaluate(ckpt, data, args.size),
    }
    times["evaluate"] = time.monotonic() - start
    result["minutes"] = {k: round(v / 60, 2) for k, v in times.items()}
    (out / "wsss_synthetic.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
