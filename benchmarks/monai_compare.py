"""cervrt's Predictor beside MONAI's ``sliding_window_inference``: time, peak memory, label agreement.

Both sides run the same tiny segmentation network (conv 3->4 3x3, ReLU, conv 4->5 1x1, softmax;
137 parameters, torch seed 0) over the same uint8 RGB image with the same
patch (400), stride (200 by default, i.e. MONAI overlap 0.5; the papers' 100 runs four times the
windows on both sides), batch (8 patches) and gaussian blending (sigma 0.125 x patch, both sides'
default), then take the argmax. The network is tiny on purpose: the
point is the tiling, fusion and memory, not the network. Runners, each in its own subprocess so that
its peak resident memory (VmHWM, reset after set-up, so it covers the call) is its own:

- ``monai-torch``: what a MONAI user writes: normalise the image into a (1, 3, H, W) float32 tensor,
  ``sliding_window_inference(..., mode="gaussian")`` with the torch network, argmax;
- ``monai-ort``: the same, but the predictor callable runs the exported ONNX graph in ONNX Runtime
  (the engine cervrt uses), so that the difference to cervrt is the tiling and fusion alone;
- ``cervrt-ort``: ``cervrt.Predictor(model.onnx, tissue_threshold=0).predict(image)`` -- every window
  runs, as in MONAI; fusion in bounded row bands by the C extension;
- ``cervrt-ort-tissue``: the same with the default tissue detection (glass windows skipped).

MONAI holds whole-image float32 buffers: the normalised input (3 planes), the output sum
(5 planes) and the weight map (1 plane) -- 36 bytes per pixel, 2.4 GB at 8192^2; cervrt holds the
uint8 image and labels and (classes + 1) x (patch + stride) float32 rows. The image is a 2048^2
synthetic slide (``cervrt.synth.synthesize_slide``) tiled to the size asked for.
Label agreement is counted over all pixels against ``monai-torch``; the two sides' gaussian windows
differ slightly (MONAI centres an even patch at P/2, cervrt at (P-1)/2), so a few near-tied pixels
may differ.

MONAI is not a cervrt dependency. Install it for this script only (it needs just torch and numpy,
which cervrt[train] already installs; --no-deps keeps pip from touching torch):

    pip install --no-deps monai
    python benchmarks/monai_compare.py [--sizes 4096 8192] [--patch 400] [--stride 200] [--batch 8]

Without MONAI it says so and exits with status 0. The machine may be shared with other jobs: the
load average is recorded; compare the ratios of one run. Writes
``benchmarks/results/monai-<cpu>-monai<v>-torch<v>-ort<v>.json`` atomically; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cervrt._io import write_json
from cervrt.bench.machine import cpu_model, host_tag, library_versions
from cervrt.bench.measure import PeakMemory
from cervrt.constants import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD, PALETTE

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
RUNNERS = ("monai-torch", "monai-ort", "cervrt-ort", "cervrt-ort-tissue")
_TILE = 2048


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192], help="image sides (px)")
    parser.add_argument("--patch", type=int, default=400)
    parser.add_argument("--stride", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runners", nargs="+", default=list(RUNNERS), choices=RUNNERS)
    parser.add_argument("--out", type=Path, default=None, help="JSON path [benchmarks/results/monai-...json]")
    parser.add_argument("--child", choices=RUNNERS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---- the model (built once, in the parent) ----------------------------------------------------------


def _network() -> Any:
    import torch
    from torch import nn

    class Tiny(nn.Module):
        has_classifier = False

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.body(x), dim=1)

        def predict_proba(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
            return self.forward(x), None

    torch.manual_seed(0)
    return Tiny().eval()


def _save_model(workdir: Path, patch: int) -> None:
    """tiny.pt (state_dict) and tiny.onnx (the same network with cervrt metadata, patch ``patch``)."""
    import onnx
    import torch

    from cervrt.artifact import FORMAT_VERSION, ONNX_FORMAT, ArtifactMetadata, attach_metadata
    from cervrt.export.onnx_export import check_graph, trace_to_onnx

    net = _network()
    torch.save(net.state_dict(), workdir / "tiny.pt")
    proto = trace_to_onnx(net, 64, 18)
    check_graph(proto)
    params = sum(p.numel() for p in net.parameters())
    attach_metadata(proto, ArtifactMetadata(
        format=ONNX_FORMAT, format_version=FORMAT_VERSION, arch="tiny", arch_kwargs={}, class_names=CLASS_NAMES,
        palette=PALETTE, mean=IMAGENET_MEAN, std=IMAGENET_STD, mpp=0.904, patch_size=patch, precision="fp32",
        opset=18, input="image", outputs=["probs"], has_classifier=False, params=params))
    onnx.save(proto, workdir / "tiny.onnx")


def _image(size: int) -> np.ndarray:
    from cervrt.synth import synthesize_slide

    tile, _ = synthesize_slide(np.random.default_rng(0), (_TILE, _TILE))
    reps = -(-size // _TILE)
    return np.ascontiguousarray(np.tile(tile, (reps, reps, 1))[:size, :size])


# ---- the runners (each in its own process) -------------------------------------------------------------


def _normalised_tensor(image: np.ndarray) -> Any:
    import torch

    mean = np.asarray(IMAGENET_MEAN, np.float32) * 255
    std = np.asarray(IMAGENET_STD, np.float32) * 255
    planes = np.empty((1, 3, *image.shape[:2]), np.float32)
    for c in range(3):
        np.subtract(image[..., c], mean[c], out=planes[0, c], dtype=np.float32)
        planes[0, c] /= std[c]
    return torch.from_numpy(planes)


def _monai(image: np.ndarray, predictor: Any, args: argparse.Namespace) -> np.ndarray:
    import torch
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        probs = sliding_window_inference(_normalised_tensor(image), (args.patch, args.patch), args.batch, predictor,
                                         overlap=1 - args.stride / args.patch, mode="gaussian", sigma_scale=0.125)
        return probs[0].argmax(0).to(torch.uint8).numpy()


def _ort_callable(workdir: Path) -> Any:
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(workdir / "tiny.onnx"), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


def _setup(runner: str, workdir: Path, args: argparse.Namespace) -> Any:
    """What the runner needs before the timed call (model loaded, session created)."""
    if runner == "monai-torch":
        import torch

        net = _network()
        net.load_state_dict(torch.load(workdir / "tiny.pt", weights_only=True))
        torch.set_grad_enabled(False)
        return lambda image: _monai(image, net, args)
    if runner == "monai-ort":
        predictor = _ort_callable(workdir)
        return lambda image: _monai(image, predictor, args)
    from cervrt.runtime.predictor import Predictor

    threshold = 0.1 if runner.endswith("tissue") else 0.0
    cervrt = Predictor(workdir / "tiny.onnx", device="cpu", batch_size=args.batch, stride=args.stride,
                       tissue_threshold=threshold)
    return cervrt.predict


def _child(args: argparse.Namespace) -> None:
    image = np.load(args.image)
    run = _setup(args.child, args.workdir, args)
    with PeakMemory() as peak:
        start = time.perf_counter()
        labels = run(image)
        seconds = time.perf_counter() - start
    np.save(args.workdir / f"{args.child}.npy", labels)
    print(json.dumps({"seconds": seconds, **peak.result()}))


# ---- the parent ------------------------------------------------------------------------------------------


def _spawn(runner: str, image: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", runner, "--image", str(image), "--workdir", str(workdir),
               "--patch", str(args.patch), "--stride", str(args.stride), "--batch", str(args.batch)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _size(size: int, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    image = _image(size)
    path = workdir / f"image{size}.npy"
    np.save(path, image)
    windows = len(range(0, size - args.patch, args.stride)) + 1
    rows = {}
    for runner in args.runners:
        print(f"  {size}^2: {runner} ...", flush=True)
        rows[runner] = _spawn(runner, path, workdir, args)
    reference = np.load(workdir / f"{args.runners[0]}.npy") if "error" not in rows[args.runners[0]] else None
    for runner, row in rows.items():
        if "error" not in row and reference is not None:
            row["agreement_with_" + args.runners[0]] = float((np.load(workdir / f"{runner}.npy") == reference).mean())
            row["peak_over_start_mib"] = round(row["peak_rss_mib"] - row["start_rss_mib"], 1)
    path.unlink()
    return {"size": size, "windows": windows * windows, "image_mib": image.nbytes / 2**20, "runners": rows}


def _print(results: dict[str, Any]) -> None:
    first = results["runners"][0]
    print(f"\n| image | runner | seconds | peak RSS MiB | peak - start MiB | agreement with {first} |")
    print("|---|---|---:|---:|---:|---:|")
    for entry in results["sizes"]:
        for runner, row in entry["runners"].items():
            if "error" in row:
                print(f"| {entry['size']}^2 | {runner} | failed: {row['error']} | | | |")
                continue
            print(f"| {entry['size']}^2 | {runner} | {row['seconds']:.1f} | {row['peak_rss_mib']:.0f} "
                  f"| {row['peak_over_start_mib']:.0f} | {row.get('agreement_with_' + first, float('nan')):.5f} |")
        base = entry["runners"].get("monai-torch", {})
        ours = entry["runners"].get("cervrt-ort", {})
        if "seconds" in base and "seconds" in ours:
            print(f"| {entry['size']}^2 | monai-torch / cervrt-ort | {base['seconds'] / ours['seconds']:.2f}x "
                  f"| {base['peak_rss_mib'] / ours['peak_rss_mib']:.2f}x "
                  f"| {base['peak_over_start_mib'] / max(ours['peak_over_start_mib'], 1):.2f}x | |")


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = _parse(argv)
    if args.child:
        _child(args)
        return None
    if importlib.util.find_spec("monai") is None:
        print("MONAI is not installed; this comparison needs it (benchmark only, not a cervrt dependency):\n"
              "    pip install --no-deps monai      # it needs only torch and numpy, already installed")
        return None
    versions = library_versions()
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="cervrt-monai-") as tmp:
        workdir = Path(tmp)
        _save_model(workdir, args.patch)
        sizes = [_size(size, workdir, args) for size in args.sizes]
    load.append(os.getloadavg()[0])
    results = {"cpu": cpu_model(), "cpus": os.cpu_count(), "versions": versions, "load_avg_1min": load,
               "patch": args.patch, "stride": args.stride, "batch": args.batch, "blend": "gaussian, sigma 0.125 P",
               "runners": args.runners, "sizes": sizes,
               "memory": "VmHWM of the runner's process, reset after set-up (image loaded, model built); "
                         "start = VmRSS at that point"}
    _print(results)
    out = args.out or RESULTS / f"monai-{host_tag(versions, ('monai', 'torch', 'onnxruntime-gpu', 'onnxruntime'))}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, results)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
