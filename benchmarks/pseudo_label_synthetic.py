"""MTCHI Algorithm 1 on synthetic data: pseudo-label accuracy and what S_p adds to Ensemble-A.

Runs the documented commands one after another (each step is skipped when its output exists, so
an interrupted run continues), then prints and saves ``OUT/results.json`` and ``OUT/results.md``:

1. ``cervrt synth`` a training set with weak (image-level labelled) regions and a separate test set;
2. ``cervrt train --arch classifier`` (M) on the pixel-annotated patches S0;
3. ``cervrt pseudo-label`` with M; its patches are compared with the synthetic truth masks of the
   weak regions (``weak/masks``, read here only, never by training), beside a chance baseline
   (each tissue window labelled with a random class of its image's labels);
4. Ensemble-A three ways at the same epoch budget: joint training on S0 (the fully supervised
   baseline), the two-stage schedule on S0 only, and the two-stage schedule on S0 + S_p;
5. ``cervrt eval`` of each run's best.pt on the test set.

Everything is synthetic and small (CPU minutes): the figures say whether the pipeline works and in
which direction S_p moves the result, not what it does on MTCHI. Usage::

    OMP_NUM_THREADS=1 python benchmarks/pseudo_label_synthetic.py --out /tmp/plx
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cervrt.runtime.tiling import window_starts
from cervrt.train.data import extract_patches, read_image, read_mask, read_weak_labels
from cervrt.train.pseudo_label import pseudo_label_accuracy, read_pseudo_labels, tissue_fraction

__all__ = ["main"]


def _run(args: list[str], log: Path) -> float:
    """Run ``cervrt ARGS`` (one thread per process), its output to ``log``; returns minutes."""
    start = time.monotonic()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-m", "cervrt", *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                       check=True)
    return (time.monotonic() - start) / 60


def _step(name: str, done: Path, args: list[str], out: Path, minutes: dict[str, float]) -> None:
    if done.exists():
        print(f"{name}: {done} exists, skipped")
        return
    minutes[name] = round(_run(args, out / f"{name}.log"), 2)
    (out / "minutes.json").write_text(json.dumps(minutes, indent=2) + "\n")
    print(f"{name}: {minutes[name]} min")


def _chance(weak: Path, patch: int, stride: int, min_tissue: float) -> float:
    """Expected accuracy of labelling every tissue window with a random class of its image's labels."""
    labels = read_weak_labels(weak / "labels.csv")
    hits = []
    for name, classes in labels.items():
        image, mask = read_image(weak / "images" / f"{name}.png"), read_mask(weak / "truth_masks" / f"{name}.png")
        corners = np.array([(y, x) for y in window_starts(image.shape[0], patch, stride)
                            for x in window_starts(image.shape[1], patch, stride)])
        for y, x in corners[tissue_fraction(image, corners, patch) >= min_tissue]:
            truth = extract_patches(mask[y : y + patch, x : x + patch], patch, patch, 0.0)[0].label
            hits.append((truth in classes) / len(classes))
    return float(np.mean(hits))


def _metrics(path: Path) -> dict[str, Any]:
    metrics = json.loads(path.read_text())["metrics"]
    return {k: metrics[k] for k in ("dice", "miou", "ap", "wp") if k in metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--classifier-epochs", type=int, default=12)
    parser.add_argument("--cls-epochs", type=int, default=4, help="Ensemble-A stage 1 epochs")
    parser.add_argument("--seg-epochs", type=int, default=4, help="Ensemble-A stage 2 epochs")
    parser.add_argument("--np", type=int, default=400)
    parser.add_argument("--keep", type=float, default=50.0)
    parser.add_argument("--seeds", default="0", help="Training seeds of the Ensemble-A runs, comma-separated.")
    a = parser.parse_args()
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    minutes = json.loads((out / "minutes.json").read_text()) if (out / "minutes.json").is_file() else {}
    data, test = out / "data", out / "test"
    _step("synth", data / "dataset.json", ["synth", "--out", str(data), "--regions", "12", "--size", "256",
                                           "--weak", "24", "--seed", "7"], out, minutes)
    _step("synth_test", test / "dataset.json", ["synth", "--out", str(test), "--regions", "8", "--size", "256",
                                                "--seed", "99"], out, minutes)
    common = ["--data", str(data), "--encoder", "resnet34", "--patch-size", "64", "--stride", "32",
              "--val-fraction", "0.25", "--device", "cpu", "--seed", "0"]
    classifier = ["train", "--arch", "classifier", *common, "--out", str(out / "m"), "--epochs",
                  str(a.classifier_epochs), "--batch-size", "16"]
    _step("classifier", out / "m" / "last.pt", classifier, out, minutes)
    pl = out / "pl" / "pseudo.csv"
    _step("pseudo_label", pl, ["pseudo-label", "--classifier", str(out / "m" / "best.pt"), "--weak-data",
                               str(data / "weak"), "--labels", str(data / "weak" / "labels.csv"), "--np", str(a.np),
                               "--keep", str(a.keep), "--stride", "32", "--device", "cpu", "--out", str(out / "pl")],
          out, minutes)
    accuracy = pseudo_label_accuracy(read_pseudo_labels(pl), data / "weak" / "truth_masks")
    accuracy["chance"] = _chance(data / "weak", 64, 32, 0.2)
    ens = ["train", "--arch", "ensemble_a", *common[:-2], "--batch-size", "8", "--loss", "ce"]
    total = str(a.cls_epochs + a.seg_epochs)
    runs = {
        "joint_s0": [*ens, "--epochs", total],
        "two_stage_s0": [*ens, "--cls-epochs", str(a.cls_epochs), "--epochs", str(a.seg_epochs)],
        "two_stage_s0_sp": [*ens, "--cls-epochs", str(a.cls_epochs), "--epochs", str(a.seg_epochs),
                            "--pseudo-labels", str(pl), "--weak-data", str(data / "weak")],
    }
    results: dict[str, Any] = {}
    for seed, (base, args) in ((s, r) for s in a.seeds.split(",") for r in runs.items()):
        name = base if seed == "0" else f"{base}_seed{seed}"
        _step(name, out / name / "last.pt", [*args, "--seed", seed, "--out", str(out / name)], out, minutes)
        _step(f"eval_{name}", out / f"eval_{name}.json", ["eval", "--model", str(out / name / "best.pt"), "--data",
                                                          str(test), "--stride", "32", "--device", "cpu", "--json",
                                                          str(out / f"eval_{name}.json")], out, minutes)
        results[name] = _metrics(out / f"eval_{name}.json")
    report = {"pseudo_labels": accuracy, "pseudo_summary": json.loads((out / "pl" / "pseudo.json").read_text()),
              "test_metrics": results, "minutes": minutes}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    for base in runs:
        seeds = [m for name, m in results.items() if name == base or name.startswith(f"{base}_seed")]
        if len(seeds) > 1:
            mean = {k: float(np.mean([m[k] for m in seeds])) for k in seeds[0]}
            results[f"{base} (mean of {len(seeds)} seeds)"] = mean
    lines = ["| Ensemble-A (ResNet-34, 64 px, synthetic) | Dice | mIoU | AP | WP |", "|---|---|---|---|---|"]
    lines += [f"| {name} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in ("dice", "miou", "ap", "wp")) + " |"
              for name, m in results.items()]
    text = (f"pseudo-labels: {accuracy['patches']} patches, accuracy {accuracy['accuracy']:.3f} "
            f"(chance {accuracy['chance']:.3f}), class present {accuracy['class_present']:.3f}, "
            f"no foreground {accuracy['no_foreground']:.3f}\n\n" + "\n".join(lines) + "\n")
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
