"""Learning curves of the papers' methods on ``cervrt synth`` data, on a CPU: do they learn?

Studies (issue 16), each run from scratch, resumable, one process per run so that runs can share
a machine:

- ``hspnet-ae`` / ``hspnet-ce``: HSP-Net ResNet-34 with AE-loss / cross entropy;
- ``deeplab-ae``: DeepLab v3+ ResNet-34, same loss, same data, same steps;
- ``wsss``: phase-1 PDA classifier -> Grad-CAM pseudo masks (each layer, fused) -> phase-2 HSP-Net,
  each against the truth beside two trivial baselines, with and without the classification gate.

The synthetic geometry is scaled down to fit a shared 2-core CPU: 128 px regions get a band 0.32x
the full 60-150 px (19-48 px thick), so a 64 px patch sees the epithelium's whole thickness.
Held-out regions are the loop's validation split (the same for every run of one seed).

    python benchmarks/learning.py data   --out /tmp/learn
    python benchmarks/learning.py run    --out /tmp/learn --study hspnet-ae --seed 0
    python benchmarks/learning.py wsss   --out /tmp/learn --seed 0
    python benchmarks/learning.py report --out /tmp/learn   # -> benchmarks/results/learning*.{json,png}

Every results file is strict JSON (null for an absent class). Nothing here asserts on time.
As measured on 2026-12-01 (load 12-21 on 2 cores): each ``run`` got ``--minutes 50``, then the seed-0
HSP-Net runs ``--minutes 17`` more (they finished their 10 epochs, 469 steps); seeds 1-2 and DeepLab
stopped at 50 min (231-370 steps). Compare studies at equal steps (``at_common_steps``, the steps
panels), not at equal minutes. WSSS: ``wsss --data wsss`` and ``wsss --data wsss-crop`` (seed 0 only).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["STUDIES", "main"]

STUDIES: dict[str, dict[str, str]] = {
    "hspnet-ae": {"arch": "hspnet", "loss": "ae"},
    "hspnet-ce": {"arch": "hspnet", "loss": "ce"},
    "deeplab-ae": {"arch": "deeplabv3plus", "loss": "ae"},
}
#: Sizes of every run (recorded in the results).
SETTINGS = {"regions": 64, "region_size": 128, "patch": 64, "stride": 32, "batch_size": 8, "epochs": 10,
            "val_fraction": 0.125, "wsss_weak": 160, "wsss_heldout": 24, "wsss_size": 64,
            "cls_epochs": 12, "seg_epochs": 8}
_RESULTS = Path(__file__).resolve().parent / "results"


def _strict(value: Any) -> Any:
    """JSON-safe copy: NaN / inf become None, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _write(path: Path, data: Any) -> None:
    from cervrt._io import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, _strict(data))


def _threads() -> None:
    import torch

    torch.set_num_threads(1)  # one core per run: several runs share the machine


def cmd_data(args: argparse.Namespace) -> None:
    from cervrt.synth import write_dataset

    s = SETTINGS
    if not (args.out / "data" / "dataset.json").is_file():
        write_dataset(args.out / "data", regions=s["regions"], size=s["region_size"], seed=1, progress=False)
    if not (args.out / "wsss" / "weak" / "labels.csv").is_file():  # before: 64 px regions, a 10-24 px band
        write_dataset(args.out / "wsss", regions=s["wsss_heldout"], size=s["wsss_size"], seed=2,
                      weak_regions=s["wsss_weak"], progress=False)
    if not (args.out / "wsss-crop" / "weak" / "labels.csv").is_file():  # after: 64 px tiles of 128 px regions
        write_dataset(args.out / "wsss-crop", regions=s["wsss_heldout"], size=s["region_size"], seed=2,
                      weak_regions=s["wsss_weak"], weak_size=s["wsss_size"], progress=False)
    print(f"data in {args.out}/data, {args.out}/wsss and {args.out}/wsss-crop")


def cmd_run(args: argparse.Namespace) -> None:
    from cervrt.checkpoint import load_checkpoint
    from cervrt.train.loop import TrainConfig, train

    _threads()
    s, study = SETTINGS, STUDIES[args.study]
    out = args.out / "runs" / f"{args.study}-s{args.seed}"
    last = out / "last.pt"
    if last.is_file():
        if load_checkpoint(last)["epoch"] >= s["epochs"]:
            return print(f"{out} is complete")
        train(resume=str(last), overrides={"time_limit_minutes": args.minutes})
    else:
        config = TrainConfig(data=str(args.out / "data"), out=str(out), arch=study["arch"], encoder="resnet34",
                             epochs=s["epochs"], batch_size=s["batch_size"], loss=study["loss"],
                             patch_size=s["patch"], stride=s["stride"], val_fraction=s["val_fraction"],
                             seed=args.seed, device="cpu", time_limit_minutes=args.minutes)
        train(config)


def _baselines(root: Path, patch: int) -> dict[str, Any]:
    """The two trivial baselines on the weak patches' true masks: every pixel background, and every
    non-glass pixel painted with its patch's highest labelled grade (image-level labels only)."""
    from cervrt.constants import NUM_CLASSES
    from cervrt.glass import GlassThreshold
    from cervrt.metrics import MetricAccumulator
    from cervrt.train.wsss.data import load_weak_source

    source = load_weak_source(root, root / "labels.csv", patch=patch, stride=patch, min_foreground=0.2)
    accs = {"all_background": MetricAccumulator(NUM_CLASSES), "paint_patch_label": MetricAccumulator(NUM_CLASSES)}
    for sample in source.samples:
        truth = source.truth(sample)
        glass = GlassThreshold().glass(source.crop(sample))
        accs["all_background"].update(np.zeros_like(truth), truth)
        accs["paint_patch_label"].update(np.where(glass, 0, max(sample.labels)).astype(np.uint8), truth)
    return {k: _summary(a.compute()) for k, a in accs.items()}


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    keep = ("dice", "miou", "wp", "ap", "iou")
    return {k: metrics[k] for k in keep if k in metrics}


def _class_shares(directory: Path) -> list[float]:
    """Pixel share of classes 0..4 over the PNG masks of a directory."""
    from cervrt.train.data import read_mask

    counts = sum(np.bincount(read_mask(p).ravel(), minlength=5) for p in sorted(directory.glob("*.png")))
    return (np.asarray(counts, float) / max(1, np.sum(counts))).round(4).tolist()


def cmd_wsss(args: argparse.Namespace) -> None:
    from cervrt.checkpoint import load_checkpoint
    from cervrt.train.wsss import (
        ClassifierConfig,
        PseudoMaskConfig,
        SegmenterConfig,
        generate_pseudo_masks,
        train_classifier,
        train_segmenter,
    )
    from cervrt.train.wsss.data import FUSED_DIR, MASK_DIRS

    _threads()
    s, data = SETTINGS, args.out / args.data
    tag = "" if args.cls_lr == 1e-3 else f"-clslr{args.cls_lr:g}"
    run = args.out / "runs" / f"{args.data}-s{args.seed}{tag}"
    weak = {"data": str(data / "weak"), "labels": str(data / "weak" / "labels.csv")}
    times: dict[str, float] = {}
    start = time.monotonic()
    cls = train_classifier(ClassifierConfig(**weak, out=str(run / "cls"), epochs=s["cls_epochs"], batch_size=8,
                                            lr=args.cls_lr, patch_size=s["wsss_size"], stride=s["wsss_size"],
                                            device="cpu", seed=args.seed, time_limit_minutes=args.minutes))
    times["train_cls"] = time.monotonic() - start
    start = time.monotonic()
    pm = generate_pseudo_masks(PseudoMaskConfig(classifier=str(cls), **weak, out=str(run / "pm"), device="cpu"))
    held = generate_pseudo_masks(PseudoMaskConfig(classifier=str(cls), data=str(data), out=str(run / "pm-heldout"),
                                                  device="cpu"))
    times["pseudo_masks"] = time.monotonic() - start
    shares = {"truth": _class_shares(data / "weak" / "truth_masks"),
              **{k: _class_shares(run / "pm" / d) for k, d in {**MASK_DIRS, "fused": FUSED_DIR}.items()}}
    result: dict[str, Any] = {
        "synthetic": True, "seed": args.seed, "settings": s,
        "classifier_history": load_checkpoint(cls).get("history", []),
        "baselines_on_weak_patches": _baselines(data / "weak", s["wsss_size"]),
        "pseudo_masks_on_weak_patches": {k: _summary(v) for k, v in pm["truth_metrics"].items()},
        "pseudo_masks_on_heldout_regions_true_labels": {k: _summary(v) for k, v in held["truth_metrics"].items()},
        "pixel_class_shares": shares,
    }
    _write(run / "wsss.json", result)
    if args.until == "pseudo":
        return print(json.dumps(_strict(result), indent=1))
    start = time.monotonic()
    artifact = train_segmenter(SegmenterConfig(pseudo=str(run / "pm"), classifier=str(cls), out=str(run / "seg"),
                                               epochs=s["seg_epochs"], batch_size=8, device="cpu", seed=args.seed,
                                               lr=args.seg_lr, time_limit_minutes=args.minutes))
    times["train_seg"] = time.monotonic() - start
    ckpt = load_checkpoint(artifact)
    result["phase2_history"] = ckpt.get("history", load_checkpoint(run / "seg" / "last.pt").get("history", []))
    result["phase2_on_weak_patches"] = _evaluate_wsss(ckpt, data / "weak", s["wsss_size"], truth="truth_masks")
    result["phase2_on_heldout_regions"] = _evaluate_wsss(ckpt, data, s["wsss_size"])
    result["minutes"] = {k: v / 60 for k, v in times.items()}
    _write(run / "wsss.json", result)
    print(json.dumps(_strict(result), indent=1))


def _evaluate_wsss(ckpt: dict[str, Any], root: Path, patch: int, truth: str = "masks") -> dict[str, Any]:
    """Phase 2 against the truth, plain and gated, with the share of pixels it gives each class."""
    from cervrt.metrics import MetricAccumulator
    from cervrt.models import model_from_checkpoint
    from cervrt.runtime.tiling import BlendMode
    from cervrt.train.data import read_image, read_mask
    from cervrt.train.evaluate import SlidingWindow, predict_region
    from cervrt.train.wsss import gated

    sw = SlidingWindow(patch=patch, stride=patch, blend=BlendMode.GAUSSIAN, batch_size=8)
    result: dict[str, Any] = {"regions": len(list((root / truth).glob("*.png")))}
    for name, model in (("plain", model_from_checkpoint(ckpt).eval()), ("gated", gated(ckpt))):
        acc, counts = MetricAccumulator(5), np.zeros(5)
        for path in sorted((root / truth).glob("*.png")):
            pred = predict_region(model, read_image(root / "images" / path.name), sw, "cpu")
            acc.update(pred, read_mask(path))
            counts += np.bincount(pred.ravel(), minlength=5)
        result[name] = {**_summary(acc.compute()), "predicted_shares": (counts / counts.sum()).round(4).tolist()}
    return result


def _history(run: Path) -> list[dict[str, Any]]:
    path = run / "history.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _steps(run: Path, seed: int) -> tuple[int, int]:
    """(steps per full epoch, steps taken in all) of a supervised run: the batches of its training split
    (drop_last), and the schedule's step count in ``last.pt`` (exact, also after a time-limit stop)."""
    from cervrt.checkpoint import load_checkpoint
    from cervrt.train.data import PatchDataset, list_regions, split_regions

    s = SETTINGS
    ckpt = load_checkpoint(run / "last.pt")
    data = ckpt["train_config"]["data"]
    train_regions, _ = split_regions(list_regions(data), s["val_fraction"], seed)
    patches = len(PatchDataset(train_regions, patch=s["patch"], stride=s["stride"]))
    return patches // s["batch_size"], int(ckpt["scheduler"]["last_epoch"])


def _cumulative_minutes(seconds: list[float]) -> list[float]:
    """Minutes since the run began: a resumed call counts its seconds from its own start."""
    minutes, offset, previous = [], 0.0, 0.0
    for value in seconds:
        if value < previous:
            offset += previous
        minutes.append((offset + value) / 60)
        previous = value
    return minutes


def _curves(runs: Path) -> dict[str, dict[str, Any]]:
    """Per run: epochs, steps, minutes and the held-out dice / miou / wp after every epoch."""
    curves = {}
    for run in sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("wsss")):
        history = _history(run)
        if not history:
            continue
        per_epoch, total = _steps(run, int(run.name.rsplit("-s", 1)[1]))
        steps = [h["epoch"] * per_epoch for h in history]
        steps[-1] = total  # an epoch a time limit cut short (only the last one is known exactly)
        curves[run.name] = {
            "epochs": [h["epoch"] for h in history],
            "steps": steps,
            "minutes": _cumulative_minutes([h["seconds"] for h in history]),
            **{k: [h.get(k) for h in history] for k in ("dice", "miou", "wp", "train_loss")},
        }
    return curves


def _at(curve: dict[str, Any], key: str, steps: int) -> float | None:
    """``key`` after the last epoch that ended within ``steps`` steps."""
    values = [v for n, v in zip(curve["steps"], curve[key], strict=True) if n <= steps]
    return values[-1] if values else None


def _table(curves: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Last-epoch figures per study: mean and sd over seeds, and the seeds."""
    table: dict[str, Any] = {}
    for study in STUDIES:
        seeds = {name: c for name, c in curves.items() if name.rsplit("-s", 1)[0] == study}
        if not seeds:
            continue
        row: dict[str, Any] = {"seeds": sorted(int(n.rsplit("-s", 1)[1]) for n in seeds),
                               "epochs": [c["epochs"][-1] for c in seeds.values()],
                               "minutes": [round(c["minutes"][-1], 1) for c in seeds.values()]}
        for key in ("dice", "miou", "wp"):
            values = [c[key][-1] for c in seeds.values() if c[key][-1] is not None]
            row[key] = {"mean": float(np.mean(values)), "sd": float(np.std(values)), "per_seed": values}
            row[f"best_{key}"] = [max(v for v in c[key] if v is not None) for c in seeds.values()]
        row["steps"] = [c["steps"][-1] for c in seeds.values()]
        common = min(c["steps"][-1] for c in curves.values())  # the same budget in steps for every run
        row["at_common_steps"] = {"steps": common, **{key: [_at(c, key, common) for c in seeds.values()]
                                                      for key in ("dice", "miou", "wp")}}
        table[study] = row
    return table


def _plot(curves: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"hspnet-ae": "tab:blue", "hspnet-ce": "tab:orange", "deeplab-ae": "tab:green"}
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    for row, x_key in enumerate(("steps", "minutes")):
        for col, metric in enumerate(("dice", "miou", "wp")):
            ax = axes[row][col]
            for name, c in curves.items():
                study = name.rsplit("-s", 1)[0]
                ax.plot(c[x_key], [np.nan if v is None else v for v in c[metric]], marker=".",
                        color=colours.get(study, "grey"), label=name, alpha=0.85)
            ax.set_xlabel("training steps (batch 8)" if x_key == "steps" else "wall-clock minutes (shared CPU)")
            ax.set_ylabel(f"held-out {metric}")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            if metric == "dice":
                ax.axhline(0.8, color="red", lw=0.8, ls="--")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("cervrt synth, 128 px regions, 64 px patches, ResNet-34 from scratch, 1 CPU thread per run")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _wsss_bars(run: dict[str, Any]) -> dict[str, float]:
    """mIoU of each WSSS product against the truth, in plotting order."""
    bars = {f"baseline: {k}": v["miou"] for k, v in run["baselines_on_weak_patches"].items()}
    bars.update({f"pseudo {k} (weak)": v["miou"] for k, v in run["pseudo_masks_on_weak_patches"].items()})
    fused = run["pseudo_masks_on_heldout_regions_true_labels"]["fused"]["miou"]
    bars["pseudo fused (held-out, true labels)"] = fused
    for where in ("weak_patches", "heldout_regions"):
        for gate in ("plain", "gated"):
            if f"phase2_on_{where}" in run:
                bars[f"phase 2 {gate} ({where.split('_')[0]})"] = run[f"phase2_on_{where}"][gate]["miou"]
    return bars


def _plot_wsss(wsss: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(wsss), figsize=(6.5 * len(wsss), 5), constrained_layout=True, squeeze=False)
    for ax, (name, run) in zip(axes[0], wsss.items(), strict=True):
        bars = _wsss_bars(run)
        ax.barh(list(bars), [np.nan if v is None else v for v in bars.values()],
                color=["grey" if k.startswith("baseline") else "tab:blue" if k.startswith("pseudo") else "tab:green"
                       for k in bars])
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("mIoU against the true masks")
        ax.set_title(name, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cmd_report(args: argparse.Namespace) -> None:
    curves = _curves(args.out / "runs")
    wsss = {p.parent.name: json.loads(p.read_text()) for p in sorted((args.out / "runs").glob("wsss*-s*/wsss.json"))}
    result = {"synthetic": True, "device": "cpu, 2 shared cores, 1 torch thread per run", "settings": SETTINGS,
              "supervised": _table(curves), "curves": curves, "wsss": wsss}
    _RESULTS.mkdir(exist_ok=True)
    _write(_RESULTS / "learning.json", result)
    if curves:
        _plot(curves, _RESULTS / "learning-curves.png")
    if wsss:
        _plot_wsss(wsss, _RESULTS / "learning-wsss.png")
    print(json.dumps(_strict(result["supervised"]), indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("data", "run", "wsss", "report"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--minutes", type=float, default=None, help="time limit of this call's training")
        if name == "run":
            p.add_argument("--study", choices=sorted(STUDIES), required=True)
        if name == "wsss":
            p.add_argument("--until", choices=["pseudo", "eval"], default="eval")
            p.add_argument("--data", choices=["wsss", "wsss-crop"], default="wsss-crop",
                           help="weak set: 64 px regions of their own (wsss) or 64 px tiles of 128 px regions")
            p.add_argument("--seg-lr", type=float, default=1e-3)
            p.add_argument("--cls-lr", type=float, default=1e-3,
                           help="phase-1 encoder lr (the paper's is 1e-2; 1e-3 was this benchmark's first choice)")
    args = parser.parse_args()
    {"data": cmd_data, "run": cmd_run, "wsss": cmd_wsss, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
