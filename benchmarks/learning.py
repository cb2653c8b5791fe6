"""Learning curves of the papers' methods on ``cervrt synth`` data, on a CPU: do they learn?

Studies (issue 16), each run from scratch, resumable, one process per run so that runs can share
a machine:

- ``hspnet-ae`` / ``hspnet-ce``: HSP-Net ResNet-34 with AE-loss / cross entropy;
- ``deeplab-ae``: DeepLab v3+ ResNet-34, same loss, same data, same steps;
- ``hspnet-ae-long``: HSP-Net AE-loss over 10 epochs instead of 7 (its own cosine schedule): where
  the curve goes with more steps;
- ``wsss``: phase-1 PDA classifier -> Grad-CAM pseudo masks (each layer, fused) -> phase-2 HSP-Net
  (12 epochs, then 30 from scratch), each against the truth beside two trivial baselines, with and
  without the classification gate, and phase 2 against its own targets (layer4 and fused masks).
  On the held-out regions the pseudo masks are scored twice: with the labels phase 1 predicts (as
  the authors evaluate phase 1 on test patches, which have no image-level labels) and with the true
  labels (an oracle). ``report`` adds the fully supervised ``hspnet-ae-long`` on the same regions.

The synthetic geometry is scaled down to fit a shared 2-core CPU: 128 px regions (0.32x the full
geometry; bands 38-48 px thick, the generator's floor of four atypical-nucleus spacings), so a 64 px
patch sees the epithelium's whole thickness. 192 regions: 160 train, 32 held out (the loop's
validation split, the same for every run of one seed), evaluated by sliding window at stride 16
(the papers' 75% overlap). WSSS: 800 weak 64 px tiles of 128 px regions, 24 held-out regions.

    python benchmarks/learning.py all    --out /tmp/learn   # everything, two runs at a time, then report
    python benchmarks/learning.py data   --out /tmp/learn
    python benchmarks/learning.py run    --out /tmp/learn --study hspnet-ae --seed 0
    python benchmarks/learning.py wsss   --out /tmp/learn --seed 0
    python benchmarks/learning.py report --out /tmp/learn   # -> benchmarks/results/learning*.{json,png}

Every results file is strict JSON (null for an absent class). Nothing here asserts on time.
Compare studies at equal steps (``at_common_steps``, the steps panels), not only at equal minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from cervrt._io import nan_to_none

__all__ = ["STUDIES", "main"]

STUDIES: dict[str, dict[str, Any]] = {
    "hspnet-ae": {"arch": "hspnet", "loss": "ae"},
    "hspnet-ce": {"arch": "hspnet", "loss": "ce"},
    "deeplab-ae": {"arch": "deeplabv3plus", "loss": "ae"},
    "hspnet-ae-long": {"arch": "hspnet", "loss": "ae", "epochs": 10},  # where HSP-Net goes with more steps
}
#: Sizes of every run (recorded in the results). Phase 1 runs 30 epochs: at 10 its held-out AUC for
#: CIN 1 / CIN 2 was 0.63 / 0.60, at 30 0.72 / 0.70. It keeps lr 1e-3 with the head at 1x: the
#: authors' 1e-2 with the head at 10x collapses from scratch (constant outputs, loss ln 2, by epoch 5).
#: Phase 2 keeps lr 1e-3 too: at the authors' 1e-2 it reached held-out mIoU 0.347 / 0.420 (plain /
#: gated) after 12 epochs, against 0.446 / 0.475.
SETTINGS = {"regions": 192, "region_size": 128, "patch": 64, "stride": 32, "batch_size": 8, "epochs": 7,
            "val_fraction": 1 / 6, "val_stride": 16, "wsss_weak": 800, "wsss_heldout": 24, "wsss_size": 64,
            "cls_epochs": 30, "cls_lr": 1e-3, "cls_head_lr_mult": 1.0, "seg_epochs": (12, 30),
            "bg_threshold": 0.0,
            "bg_threshold_before": 0.3}
_RESULTS = Path(__file__).resolve().parent / "results"


def _write(path: Path, data: Any) -> None:
    from cervrt._io import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)  # strict JSON: NaN and inf as null


def _threads() -> None:
    import torch

    torch.set_num_threads(1)  # one core per run: several runs share the machine


def cmd_data(args: argparse.Namespace) -> None:
    from cervrt.synth import write_dataset

    s = SETTINGS
    if not (args.out / "data" / "dataset.json").is_file():
        write_dataset(args.out / "data", regions=s["regions"], size=s["region_size"], seed=1, progress=False)
    if not (args.out / "wsss" / "weak" / "labels.csv").is_file():  # 64 px weak tiles of 128 px regions
        write_dataset(args.out / "wsss", regions=s["wsss_heldout"], size=s["region_size"], seed=2,
                      weak_regions=s["wsss_weak"], weak_size=s["wsss_size"], progress=False)
    print(f"data in {args.out}/data and {args.out}/wsss")


def cmd_run(args: argparse.Namespace) -> None:
    from cervrt.checkpoint import load_checkpoint
    from cervrt.train.loop import TrainConfig, train

    _threads()
    s, study = SETTINGS, STUDIES[args.study]
    out = args.out / "runs" / f"{args.study}-s{args.seed}"
    last, epochs = out / "last.pt", study.get("epochs", s["epochs"])
    if last.is_file():
        if load_checkpoint(last)["epoch"] >= epochs:
            return print(f"{out} is complete")
        train(resume=str(last), overrides={"time_limit_minutes": args.minutes})
    else:
        config = TrainConfig(data=str(args.out / "data"), out=str(out), arch=study["arch"], encoder="resnet34",
                             epochs=epochs, batch_size=s["batch_size"], loss=study["loss"],
                             patch_size=s["patch"], stride=s["stride"], val_fraction=s["val_fraction"],
                             val_stride=s["val_stride"], seed=args.seed, device="cpu",
                             time_limit_minutes=args.minutes)
        train(config)
    _write(out / "confusion.json", _confusion(out / "last.pt"))


def _confusion(path: Path) -> dict[str, Any]:
    """The held-out confusion matrix (rows truth 0..4, columns prediction) of a run's last model."""
    from cervrt.checkpoint import load_checkpoint
    from cervrt.models import model_from_checkpoint
    from cervrt.runtime.tiling import BlendMode
    from cervrt.train.data import list_regions, load_region, split_regions
    from cervrt.train.evaluate import SlidingWindow, predict_region

    ckpt = load_checkpoint(path)
    config, model = ckpt["train_config"], model_from_checkpoint(ckpt).eval()
    _, held_out = split_regions(list_regions(config["data"]), config["val_fraction"], config["seed"])
    sw = SlidingWindow(patch=config["patch_size"], stride=config["val_stride"], blend=BlendMode.GAUSSIAN,
                       batch_size=8)
    confusion = np.zeros((5, 5), np.int64)
    for region in held_out:
        image, mask = load_region(region)
        np.add.at(confusion, (mask.ravel(), predict_region(model, image, sw, "cpu").ravel()), 1)
    recall = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {"epoch": ckpt["epoch"], "confusion": confusion.tolist(), "recall": recall.round(4).tolist()}


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


def _auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None with one class only."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return None
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                 / (len(pos) * len(neg)))


def _classifier_heldout(cls: Path, root: Path, patch: int) -> dict[str, Any]:
    """Phase 1 on the held-out regions' patches (labels from their masks): exact match, per-class AUC."""
    import torch

    from cervrt.checkpoint import load_checkpoint
    from cervrt.train.tensors import to_model_input
    from cervrt.train.wsss.classify import classifier_from_checkpoint
    from cervrt.train.wsss.data import load_weak_source

    ckpt = load_checkpoint(cls)
    model = classifier_from_checkpoint(ckpt)
    source = load_weak_source(root, None, patch=patch, stride=patch, min_foreground=0.2)
    truth = np.stack([s.multi_hot() for s in source.samples]) > 0.5
    with torch.no_grad():
        probs = np.concatenate([torch.sigmoid(model(to_model_input(np.stack([source.crop(s) for s in batch]),
                                                                   ckpt["mean"], ckpt["std"], "cpu"))).numpy()
                                for batch in (source.samples[i : i + 16] for i in range(0, len(source.samples), 16))])
    return {"patches": len(truth), "exact_match": float(((probs > 0.5) == truth).all(axis=1).mean()),
            "auc": [_auc(probs[:, k], truth[:, k]) for k in range(4)], "positives": truth.sum(axis=0).tolist()}


def _background_given_a_grade(pred_dir: Path, truth_dir: Path) -> float:
    """Share of truth-background pixels (stroma and glass, which the metrics leave out) given a grade
    by the pseudo masks ``NAME_yY_xX.png`` (the patch of ``truth_dir/NAME.png`` at y, x)."""
    from cervrt.train.data import read_mask

    hit = total = 0
    for path in sorted(pred_dir.glob("*.png")):
        name, y, x = path.stem.rsplit("_", 2)
        pred = read_mask(path)
        y0, x0 = int(y[1:]), int(x[1:])
        truth = read_mask(truth_dir / f"{name}.png")[y0 : y0 + pred.shape[0], x0 : x0 + pred.shape[1]]
        hit, total = hit + int((pred[truth == 0] > 0).sum()), total + int((truth == 0).sum())
    return round(hit / max(1, total), 4)


#: A class is present in a held-out window when phase 1 gives it a probability above this: the
#: threshold of the authors' evaluation of phase 1 on test patches (which have no image-level labels).
PREDICTED_LABEL_THRESHOLD = 0.25


def _pseudo_heldout(cls: Path, root: Path, patch: int) -> dict[str, Any]:
    """Pseudo masks as predictions on the held-out regions, every pixel, the same regions phase 2 is
    scored on: each region cut into windows of ``patch`` at stride ``patch``, each window's Grad-CAMs
    (each layer and fused) kept for its true labels (from its mask: an oracle) and, as the authors
    evaluate phase 1, for the labels phase 1 predicts (probability above 0.25, else the most probable)."""
    from cervrt.checkpoint import load_checkpoint
    from cervrt.glass import GlassThreshold
    from cervrt.metrics import MetricAccumulator
    from cervrt.models.wsss import CAM_LAYERS
    from cervrt.runtime.tiling import window_starts
    from cervrt.train.data import pad_to_patch, read_image, read_mask
    from cervrt.train.wsss.cam import CamScorer, fuse_layers, pseudo_mask
    from cervrt.train.wsss.data import patch_labels

    ckpt = load_checkpoint(cls)
    scorer, glass = CamScorer(ckpt, "cpu"), GlassThreshold()
    min_share = float(ckpt.get("train_config", {}).get("label_min_share", 0.01))
    kinds, layers = ("true_labels", "predicted_labels"), (*CAM_LAYERS, "fused")
    accs = {kind: {layer: MetricAccumulator(5) for layer in layers} for kind in kinds}
    windows = exact = 0
    for path in sorted((root / "masks").glob("*.png")):
        truth = read_mask(path)
        rgb, padded = pad_to_patch(read_image(root / "images" / path.name), patch, 255), pad_to_patch(truth, patch, 0)
        preds = {kind: {layer: np.zeros(rgb.shape[:2], np.uint8) for layer in layers} for kind in kinds}
        for y in window_starts(rgb.shape[0], patch, patch):
            for x in window_starts(rgb.shape[1], patch, patch):
                tile = rgb[y : y + patch, x : x + patch]
                layer_scores, probs = scorer.scores(tile[None])
                on_glass = glass.glass(tile)
                scores = dict(zip(layers, [s[0] for s in layer_scores] + [fuse_layers(layer_scores)[0]], strict=True))
                true = patch_labels(padded[y : y + patch, x : x + patch], min_share)
                predicted = tuple(int(k) + 1 for k in np.flatnonzero(probs[0] > PREDICTED_LABEL_THRESHOLD))
                predicted = predicted or (int(probs[0].argmax()) + 1,)
                windows, exact = windows + 1, exact + (predicted == true)
                for kind, labels in (("true_labels", true), ("predicted_labels", predicted)):
                    for layer, layer_score in scores.items():
                        window = pseudo_mask(layer_score, labels, on_glass, 0.0)
                        preds[kind][layer][y : y + patch, x : x + patch] = window
        for kind in kinds:
            for layer in layers:
                accs[kind][layer].update(preds[kind][layer][: truth.shape[0], : truth.shape[1]], truth)
    result: dict[str, Any] = {kind: {layer: _summary(acc.compute()) for layer, acc in accs[kind].items()}
                              for kind in kinds}
    result["windows"], result["predicted_labels_exact"] = windows, round(exact / max(1, windows), 4)
    result["predicted_label_threshold"] = PREDICTED_LABEL_THRESHOLD
    return result


def _pseudo(cls: Path, weak: dict[str, str], out: Path, bg: float, truth: Path) -> dict[str, Any]:
    from cervrt.train.wsss import PseudoMaskConfig, generate_pseudo_masks
    from cervrt.train.wsss.data import FUSED_DIR, MASK_DIRS

    pm = generate_pseudo_masks(PseudoMaskConfig(classifier=str(cls), **weak, out=str(out), bg_threshold=bg,
                                                device="cpu"))
    dirs = {**MASK_DIRS, "fused": FUSED_DIR}
    return {"bg_threshold": bg, "metrics": {k: _summary(v) for k, v in pm["truth_metrics"].items()},
            "pixel_class_shares": {k: _class_shares(out / d) for k, d in dirs.items()},
            "background_given_a_grade": {k: _background_given_a_grade(out / d, truth) for k, d in dirs.items()}}


def cmd_wsss(args: argparse.Namespace) -> None:
    from cervrt.checkpoint import load_checkpoint
    from cervrt.train.wsss import ClassifierConfig, SegmenterConfig, train_classifier, train_segmenter

    _threads()
    s = {**SETTINGS, "seg_epochs": tuple(args.seg_epochs or SETTINGS["seg_epochs"])}
    data = args.out / "wsss"
    run = args.out / "runs" / f"wsss-s{args.seed}"
    weak = {"data": str(data / "weak"), "labels": str(data / "weak" / "labels.csv")}
    truth = data / "weak" / "truth_masks"
    times: dict[str, float] = {}  # minutes; training stages as their runs recorded them (resumed runs included)
    cls = train_classifier(ClassifierConfig(**weak, out=str(run / "cls"), epochs=s["cls_epochs"], batch_size=8,
                                            lr=s["cls_lr"], head_lr_mult=s["cls_head_lr_mult"],
                                            patch_size=s["wsss_size"], stride=s["wsss_size"], device="cpu",
                                            seed=args.seed, time_limit_minutes=args.minutes))
    cls_ckpt = load_checkpoint(cls)
    times["train_cls"] = _trained_minutes(cls_ckpt)
    start = time.monotonic()
    chosen = _pseudo(cls, weak, run / "pm", s["bg_threshold"], truth)
    before = _pseudo(cls, weak, run / "pm-before", s["bg_threshold_before"], truth)
    held = _pseudo_heldout(cls, data, s["wsss_size"])
    times["pseudo_masks"] = (time.monotonic() - start) / 60
    result: dict[str, Any] = {
        "synthetic": True, "seed": args.seed, "settings": s,
        "classifier_history": cls_ckpt.get("history", []),
        "classifier_on_heldout_patches": _classifier_heldout(cls, data, s["wsss_size"]),
        "baselines_on_weak_patches": _baselines(data / "weak", s["wsss_size"]),
        "pseudo_masks_on_weak_patches": chosen["metrics"],
        "pseudo_masks_on_heldout_regions": held,
        "pseudo_masks_before": before,
        "pixel_class_shares": {"truth": _class_shares(truth), **chosen["pixel_class_shares"]},
        "background_given_a_grade": chosen["background_given_a_grade"],
    }
    _write(run / "wsss.json", result)
    if args.until == "pseudo":
        return print(json.dumps(nan_to_none(result), indent=1))
    result["phase2"] = {}
    for epochs in s["seg_epochs"]:
        folder = run / f"seg{epochs}"
        artifact = train_segmenter(SegmenterConfig(pseudo=str(run / "pm"), classifier=str(cls), out=str(folder),
                                                   epochs=epochs, batch_size=8, device="cpu", seed=args.seed,
                                                   lr=args.seg_lr, time_limit_minutes=args.minutes))
        ckpt, last = load_checkpoint(artifact), load_checkpoint(folder / "last.pt")
        times[f"train_seg{epochs}"] = _trained_minutes(last)
        # Phase 2 against its own targets: the loss 0.2/0.2/0.6 is smallest where the prediction is
        # layer4's pseudo label (0.6 outweighs the other two together), not the fused (CAM-weighted) one.
        own = _evaluate_wsss(ckpt, run / "pm", s["wsss_size"], ("masks", "masks_fused"), gates=("plain",))
        result["phase2"][str(epochs)] = {
            "history": last.get("history", []),
            "on_weak_patches": _evaluate_wsss(ckpt, data / "weak", s["wsss_size"], ("truth_masks",))["truth_masks"],
            "on_heldout_regions": _evaluate_wsss(ckpt, data, s["wsss_size"])["masks"],
            "against_own_targets": {target: scores["plain"] for target, scores in own.items()}}
    result["minutes"] = times
    _write(run / "wsss.json", result)
    print(json.dumps(nan_to_none(result), indent=1))


def _evaluate_wsss(ckpt: dict[str, Any], root: Path, patch: int, truths: tuple[str, ...] = ("masks",),
                   gates: tuple[str, ...] = ("plain", "gated")) -> dict[str, dict[str, Any]]:
    """Phase 2 against each folder of ``truths`` under ``root`` (the images of the first), plain and/or
    gated, with the share of pixels it gives each class; each image is predicted once per gate."""
    from cervrt.metrics import MetricAccumulator
    from cervrt.models import model_from_checkpoint
    from cervrt.runtime.tiling import BlendMode
    from cervrt.train.data import read_image, read_mask
    from cervrt.train.evaluate import SlidingWindow, predict_region
    from cervrt.train.wsss import gated

    sw = SlidingWindow(patch=patch, stride=max(1, patch // 4), blend=BlendMode.GAUSSIAN, batch_size=8)
    names = [path.name for path in sorted((root / truths[0]).glob("*.png"))]
    result: dict[str, dict[str, Any]] = {truth: {"regions": len(names)} for truth in truths}
    for gate in gates:
        model = model_from_checkpoint(ckpt).eval() if gate == "plain" else gated(ckpt)
        accs = {truth: (MetricAccumulator(5), np.zeros(5), np.zeros(2)) for truth in truths}
        for name in names:
            pred = predict_region(model, read_image(root / "images" / name), sw, "cpu")
            predicted = np.bincount(pred.ravel(), minlength=5)
            for truth, (acc, counts, painted) in accs.items():
                mask = read_mask(root / truth / name)
                acc.update(pred, mask)
                counts += predicted
                painted += ((pred[mask == 0] > 0).sum(), (mask == 0).sum())
        for truth, (acc, counts, painted) in accs.items():
            result[truth][gate] = {**_summary(acc.compute()),
                                   "predicted_shares": (counts / counts.sum()).round(4).tolist(),
                                   "background_given_a_grade": round(float(painted[0] / max(1, painted[1])), 4)}
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


def _trained_minutes(ckpt: dict[str, Any]) -> float | None:
    """Training minutes of a run, from the seconds its history recorded after each epoch."""
    seconds = [h["seconds"] for h in ckpt.get("history", [])]
    return _cumulative_minutes(seconds)[-1] if seconds else None


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
            **{k: [h.get(k) for h in history] for k in ("dice", "miou", "wp", "train_loss", "dice_per_class")},
        }
        if (run / "confusion.json").is_file():
            curves[run.name]["last_confusion"] = json.loads((run / "confusion.json").read_text())
    return curves


def _at(curve: dict[str, Any], key: str, steps: int) -> float | None:
    """``key`` after the last epoch that ended within ``steps`` steps."""
    values = [v for n, v in zip(curve["steps"], curve[key], strict=True) if n <= steps]
    return values[-1] if values else None


def _mean_sd(values: list[float]) -> dict[str, float | None]:
    return {"mean": float(np.mean(values)) if values else None, "sd": float(np.std(values)) if values else None}


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
        per_class = [c["dice_per_class"][-1] for c in seeds.values() if c["dice_per_class"][-1]]
        row["dice_per_class"] = {k: _mean_sd([p[k] for p in per_class if p.get(k) is not None])
                                 for k in (per_class[0] if per_class else {})}
        common = min(c["steps"][-1] for c in curves.values())  # the same budget in steps for every run
        row["at_common_steps"] = {"steps": common, **{key: [_at(c, key, common) for c in seeds.values()]
                                                      for key in ("dice", "miou", "wp")}}
        table[study] = row
    return table


def _plot(curves: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"hspnet-ae": "tab:blue", "hspnet-ce": "tab:orange", "deeplab-ae": "tab:green",
               "hspnet-ae-long": "tab:purple"}
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
    fig.suptitle("cervrt synth, 128 px regions (160 train, 32 held-out), 64 px patches, ResNet-34 from scratch, "
                 "1 CPU thread per run, held-out sliding window at stride 16", fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _wsss_bars(run: dict[str, Any]) -> dict[str, float]:
    """mIoU of each WSSS product against the truth, in plotting order."""
    bars = {f"baseline: {k}": v["miou"] for k, v in run["baselines_on_weak_patches"].items()}
    bars.update({f"pseudo {k} (weak)": v["miou"] for k, v in run["pseudo_masks_on_weak_patches"].items()})
    for kind in ("true_labels", "predicted_labels"):
        bars[f"pseudo fused (held-out, {kind.replace('_', ' ')})"] = \
            run["pseudo_masks_on_heldout_regions"][kind]["fused"]["miou"]
    if "pseudo_masks_before" in run:
        bars[f"pseudo fused, bg-threshold {run['pseudo_masks_before']['bg_threshold']} (weak)"] = \
            run["pseudo_masks_before"]["metrics"]["fused"]["miou"]
    for epochs, phase2 in run.get("phase2", {}).items():
        for where, short in (("weak_patches", "weak"), ("heldout_regions", "held-out")):
            for gate in ("plain", "gated"):
                bars[f"phase 2, {epochs} ep, {gate} ({short})"] = phase2[f"on_{where}"][gate]["miou"]
    return bars


def _plot_wsss(wsss: dict[str, dict[str, Any]], reference: dict[str, Any] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(wsss), figsize=(6.5 * len(wsss), 5), constrained_layout=True, squeeze=False)
    for ax, (name, run) in zip(axes[0], wsss.items(), strict=True):
        bars = _wsss_bars(run)
        if reference is not None:
            bars[f"fully supervised {reference['study']} (held-out)"] = reference["miou"]["mean"]
        ax.barh(list(bars), [np.nan if v is None else v for v in bars.values()],
                color=["grey" if k.startswith(("baseline", "fully")) else "tab:blue" if k.startswith("pseudo")
                       else "tab:green" for k in bars])
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("mIoU against the true masks")
        ax.set_title(name, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=90)
    plt.close(fig)


#: The fully supervised run scored on the WSSS held-out regions, as the reference weak supervision aims at.
REFERENCE_STUDY = "hspnet-ae-long"


def _wsss_reference(out: Path) -> dict[str, Any] | None:
    """The last model of each seed of :data:`REFERENCE_STUDY` (pixel labels) on the WSSS held-out regions."""
    from cervrt.checkpoint import load_checkpoint

    runs = sorted((out / "runs").glob(f"{REFERENCE_STUDY}-s*/last.pt"))
    if not runs or not (out / "wsss" / "masks").is_dir():
        return None
    scores = {path.parent.name: _evaluate_wsss(load_checkpoint(path), out / "wsss", SETTINGS["wsss_size"],
                                               gates=("plain",))["masks"]["plain"] for path in runs}
    return {"study": REFERENCE_STUDY, "runs": scores, "miou": _mean_sd([r["miou"] for r in scores.values()])}


def cmd_report(args: argparse.Namespace) -> None:
    curves = _curves(args.out / "runs")
    wsss = {p.parent.name: json.loads(p.read_text()) for p in sorted((args.out / "runs").glob("wsss*-s*/wsss.json"))}
    reference = _wsss_reference(args.out) if wsss else None
    result = {"synthetic": True, "device": "cpu, 2 shared cores, 1 torch thread per run", "settings": SETTINGS,
              "supervised": _table(curves), "curves": curves, "wsss": wsss,
              "wsss_fully_supervised_reference": reference}
    _RESULTS.mkdir(exist_ok=True)
    _write(_RESULTS / "learning.json", result)
    if curves:
        _plot(curves, _RESULTS / "learning-curves.png")
    if wsss:
        _plot_wsss(wsss, reference, _RESULTS / "learning-wsss.png")
    print(json.dumps(nan_to_none(result["supervised"]), indent=1))


def _jobs(args: argparse.Namespace) -> list[list[str]]:
    """Every run of ``all``, longest first (WSSS is three stages in a row)."""
    jobs = [["wsss", "--seed", str(seed)] for seed in range(args.wsss_seeds)]
    for seed in range(args.seeds):
        jobs += [["run", "--study", study, "--seed", str(seed)] for study in STUDIES]
    return jobs


def cmd_all(args: argparse.Namespace) -> None:
    """data, then every run ``--parallel`` at a time (one torch thread each, ``nice``), then report."""
    import subprocess
    import sys

    cmd_data(args)
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    pending, running, start = _jobs(args), [], time.monotonic()
    while pending or running:
        while pending and len(running) < args.parallel:
            job = pending.pop(0)
            log = (args.out / "logs" / f"{'-'.join(job).replace('--', '')}.log").open("w")
            extra = ["--minutes", str(args.minutes)] if args.minutes else []
            command = ["nice", "-n", "19", sys.executable, __file__, job[0], "--out", str(args.out), *job[1:], *extra]
            running.append((job, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log))
            print(f"{(time.monotonic() - start) / 60:5.1f} min  start {' '.join(job)}", flush=True)
        time.sleep(5)
        for item in [r for r in running if r[1].poll() is not None]:
            running.remove(item)
            item[2].close()
            print(f"{(time.monotonic() - start) / 60:5.1f} min  done  {' '.join(item[0])} (exit {item[1].returncode})",
                  flush=True)
    cmd_report(args)
    print(f"all studies in {(time.monotonic() - start) / 60:.1f} min")


def _epochs(text: str) -> int:
    """An argparse type: a whole number of epochs, at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"epochs must be a whole number of at least 1, got {text!r}")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("data", "run", "wsss", "report", "all"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--minutes", type=float, default=None, help="time limit of each run's training")
        if name == "run":
            p.add_argument("--study", choices=sorted(STUDIES), required=True)
        if name == "wsss":
            p.add_argument("--until", choices=["pseudo", "eval"], default="eval")
            p.add_argument("--seg-lr", type=float, default=1e-3)
            lengths = " ".join(map(str, SETTINGS["seg_epochs"]))
            p.add_argument("--seg-epochs", type=_epochs, nargs="+", default=None,
                           help=f"phase-2 lengths, each trained from scratch [{lengths}]")
        if name == "all":
            p.add_argument("--seeds", type=int, default=3, help="seeds of each supervised study")
            p.add_argument("--wsss-seeds", type=int, default=1)
            p.add_argument("--parallel", type=int, default=2, help="runs at a time (one torch thread each)")
    args = parser.parse_args()
    {"data": cmd_data, "run": cmd_run, "wsss": cmd_wsss, "report": cmd_report, "all": cmd_all}[args.command](args)


if __name__ == "__main__":
    main()
