"""The ``cervrt`` command line: options become typed configs, the library does the work.

Every user-fixable problem (CervrtError) is printed as one line ``error: ...`` with exit code 1;
Ctrl-C prints ``interrupted`` and exits with 130. Neither prints a traceback.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import click

from cervrt import __version__
from cervrt.errors import CervrtError

__all__ = ["main"]


class _Group(click.Group):
    """A click group that turns CervrtError and Ctrl-C into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CervrtError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("\ninterrupted: nothing half-written was left behind", err=True)
            ctx.exit(130)


def _dump(obj: Any) -> str:
    from cervrt._io import nan_to_none

    return json.dumps(nan_to_none(obj), indent=2)


def _explicit(ctx: click.Context, names: list[str]) -> dict[str, Any]:
    """The options the user typed (not defaults), for overriding a resumed run's config."""
    source = click.core.ParameterSource
    return {n: ctx.params[n] for n in names if ctx.get_parameter_source(n) == source.COMMANDLINE}


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cervrt")
def cli() -> None:
    """cervrt: cervical precancer (normal, CIN 1-3) segmentation of H&E slides, from training to the scanner.

    \b
    Start with `cervrt demo`: it makes synthetic data, trains an HSP-Net for a
    couple of minutes, evaluates it and says where everything went.
    """


@cli.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory (new or empty).")
@click.option("--regions", default=12, show_default=True, type=click.IntRange(1), help="Pixel-annotated regions.")
@click.option("--size", default=512, show_default=True, type=click.IntRange(64), help="Region side in pixels.")
@click.option("--weak", "weak_regions", default=0, show_default=True, type=click.IntRange(0),
              help="Extra regions with image-level labels only (weak/labels.csv).")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed: same seed, same files.")
def synth(out: str, regions: int, size: int, weak_regions: int, seed: int) -> None:
    """Write a synthetic H&E dataset in the MTCHI layout (images/, masks/, weak/labels.csv).

    Regions show stroma, glass and squamous epithelium graded normal, CIN 1, CIN 2 or CIN 3 by
    how far crowded, enlarged, dark atypical nuclei reach up from the basement membrane.
    """
    from cervrt.synth import write_dataset

    summary = write_dataset(out, regions=regions, size=size, seed=seed, weak_regions=weak_regions)
    click.echo(_dump(summary))


_TRAIN_OVERRIDES = ["epochs", "batch_size", "lr", "workers", "device", "amp", "time_limit_minutes"]


@cli.command()
@click.option("--data", type=click.Path(), help="Dataset directory (images/ and masks/).")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory for last.pt, best.pt, history.json.")
@click.option("--arch", default="hspnet", show_default=True,
              help="Architecture: hspnet, deeplabv3plus, ensemble_a, or classifier (a patch classifier).")
@click.option("--encoder", default=None, help="Encoder: resnet34 or resnet101 (default: the architecture's).")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1))
@click.option("--loss", default="ae", show_default=True, type=click.Choice(["ce", "ae"]), help="Segmentation loss.")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Encoder learning rate (cosine annealed).")
@click.option("--head-lr-mult", default=10.0, show_default=True, type=float, help="Other blocks' lr / encoder lr.")
@click.option("--momentum", default=0.9, show_default=True, type=float)
@click.option("--weight-decay", default=1e-4, show_default=True, type=float)
@click.option("--patch-size", default=400, show_default=True, type=click.IntRange(32), help="Training patch side.")
@click.option("--stride", default=100, show_default=True, type=click.IntRange(1), help="Patch extraction stride.")
@click.option("--min-foreground", default=0.2, show_default=True, type=click.FloatRange(0, 1),
              help="Discard patches with less foreground than this.")
@click.option("--val-fraction", default=0.2, show_default=True, type=float, help="Share of regions held out.")
@click.option("--val-stride", default=None, type=click.IntRange(1), help="Validation window stride [patch size].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0), help="DataLoader workers.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--amp/--no-amp", default=True, show_default=True, help="Mixed precision (CUDA only).")
@click.option("--encoder-weights", type=click.Path(dir_okay=False),
              help="A torchvision ImageNet ResNet state_dict file to start the encoder from.")
@click.option("--mpp", default=0.904, show_default=True, type=float, help="Microns per pixel of the data.")
@click.option("--time-limit", "time_limit_minutes", default=None, type=float,
              help="Stop after the epoch in which this many minutes have passed.")
@click.option("--resume", type=click.Path(dir_okay=False), help="Continue from RUN/last.pt (its settings are kept).")
@click.option("--pseudo-labels", type=click.Path(dir_okay=False),
              help="S_p patch list from `cervrt pseudo-label`: trains the patch classifier only (classifier, "
                   "or ensemble_a's stage 1).")
@click.option("--weak-data", type=click.Path(file_okay=False), help="With --pseudo-labels: the weak images' directory.")
@click.option("--cls-epochs", default=None, type=click.IntRange(1),
              help="ensemble_a two-stage training: stage 1 (encoder + classifier) epochs [--epochs]; "
                   "stage 2 trains the segmentation layers for --epochs.")
@click.pass_context
def train(ctx: click.Context, resume: str | None, **options: Any) -> None:
    """Train a segmentation model on pixel-annotated regions.

    Defaults follow the HSP-Net paper: SGD with momentum 0.9, the encoder at lr 1e-3 and the other
    blocks at 10x, cosine annealing, 400 px patches at stride 100 with at least 20% foreground.
    """
    from cervrt.train.loop import TrainConfig
    from cervrt.train.loop import train as run_train

    if resume:
        result = run_train(resume=resume, overrides=_explicit(ctx, _TRAIN_OVERRIDES))
    else:
        if not options["data"] or not options["out"]:
            raise CervrtError("train needs --data DIR and --out RUN (or --resume RUN/last.pt)")
        result = run_train(TrainConfig(**options))
    score = result.best_metrics.get(result.score_key, math.nan)
    click.echo(f"best epoch {result.best_epoch}: {result.score_key} {score:.4f}; "
               f"checkpoints in {result.out}/ (last.pt, best.pt), history in {result.out}/history.json")


@cli.command(name="eval")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="A cervrt checkpoint.")
@click.option("--data", required=True, type=click.Path(), help="Dataset directory (images/ and masks/).")
@click.option("--stride", default=None, type=click.IntRange(1), help="Window stride [a quarter of the patch].")
@click.option("--blend", default="gaussian", show_default=True, type=click.Choice(["mean", "gaussian"]))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the metrics here.")
def evaluate(model_path: str, data: str, stride: int | None, blend: str, batch_size: int, device: str,
             json_out: str | None) -> None:
    """Predict whole regions by sliding window and print Dice, mIoU, AP, WP, FwIoU and per-class IoU."""
    from cervrt.train.evaluate import evaluate_checkpoint

    evaluate_checkpoint(model_path, data, stride=stride, blend=blend, batch_size=batch_size, device=device,
                        json_out=json_out, echo=click.echo)


@cli.command(name="export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="ONNX file to write [the checkpoint's name with .onnx, or .fp16.onnx, beside it].")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16"]),
              help="fp16: weights and activations in FP16, softmax and pooling kept in FP32.")
@click.option("--fp16-io", is_flag=True, help="With --precision fp16: float16 input and outputs too.")
@click.option("--opset", default=18, show_default=True, type=int, help="ONNX opset (18 to 24).")
@click.option("--engine", default=None, type=click.Path(dir_okay=False),
              help="Also build a TensorRT plan here (X.plan; needs a GPU and cervrt[tensorrt]).")
@click.option("--batch", default=None, help="With --engine: the profile's batch sizes MIN:OPT:MAX [1:8:32].")
@click.option("--workspace", default=None, type=float, help="With --engine: TensorRT workspace limit in GB.")
def export_command(checkpoint: str, output: str | None, precision: str, fp16_io: bool, opset: int,
                   engine: str | None, batch: str | None, workspace: float | None) -> None:
    """Export a checkpoint to a self-describing ONNX file (and optionally a TensorRT engine).

    The graph takes `image` float32 (N, 3, H, W), normalised with the mean/std in its metadata, and
    returns softmax probabilities `probs` (N, classes, H, W) -- plus `class_probs` for models with a
    patch classifier -- for any N, H and W. ONNX Runtime is checked against torch (and FP16 against
    FP32) before the file is written; a check that fails leaves no file.
    """
    from cervrt.export import ExportConfig, export

    config = ExportConfig.from_options(checkpoint, output=output, precision=precision, fp16_io=fp16_io,
                                       opset=opset, engine=engine, batch=batch, workspace=workspace)
    export(config, echo=click.echo)


@cli.command()
@click.argument("artifact", required=False, type=click.Path(dir_okay=False))
@click.option("--arch", default=None, help="Describe an architecture instead of a file.")
@click.option("--encoder", default=None, help="With --arch: resnet34 or resnet101.")
@click.option("--patch-size", default=None, type=click.IntRange(32), help="With --arch: patch side [400].")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def info(artifact: str | None, arch: str | None, encoder: str | None, patch_size: int | None, as_json: bool) -> None:
    """Describe a checkpoint or an architecture: classes, parameters, MACs at 384 and at the patch size."""
    from cervrt.artifacts import arch_info, artifact_info, format_info

    if (artifact is None) == (arch is None):
        raise CervrtError("info takes either an artifact file or --arch NAME")
    data = artifact_info(artifact) if artifact else arch_info(arch, encoder, patch_size)
    click.echo(_dump(data) if as_json else format_info(data))


@cli.command()
@click.option("--out", default="cervrt-demo", show_default=True, type=click.Path(file_okay=False),
              help="Where the demo writes its dataset, run and reports.")
@click.option("--minutes", default=2.0, show_default=True, type=click.FloatRange(0.1),
              help="Training time budget.")
@click.option("--seed", default=0, show_default=True, type=int)
def demo(out: str, minutes: float, seed: int) -> None:
    """Run the whole pipeline on built-in synthetic data: synthesise, train HSP-Net ResNet-34, evaluate."""
    from cervrt.demo import run_demo

    run_demo(out, minutes=minutes, seed=seed, echo=click.echo)


@cli.command()
@click.argument("more_models", nargs=-1, type=click.Path(dir_okay=False), metavar="[MODEL]...")
@click.option("--models", "models", multiple=True, type=click.Path(dir_okay=False),
              help="Artifacts to benchmark: --models A.pt B.onnx C.plan ... [build an untrained HSP-Net ResNet-34].")
@click.option("--batch-sizes", default="1,8", show_default=True, help="Timed batch sizes, comma-separated.")
@click.option("--quick", is_flag=True, help="1 warm-up + 3 timed runs (not 2 + 10) and one 640x640 test slide "
                                             "(not two of 1600x1600): a few minutes on a 2-core CPU.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Report directory.")
@click.option("--paper", is_flag=True, help="Only print the papers' parameter and FLOP figures beside cervrt's.")
def bench(more_models: tuple[str, ...], models: tuple[str, ...], batch_sizes: str, quick: bool, device: str,
          out: str | None, paper: bool) -> None:
    """Measure FLOPs, latency, throughput, memory and accuracy of models side by side on this machine.

    Writes OUT/report.json, OUT/report.md and PNG plots (throughput vs MACs, accuracy vs
    throughput) and prints the markdown tables.
    """
    from cervrt.bench import BenchConfig, format_paper_table, format_report, paper_table, run_bench

    if paper:
        click.echo(format_paper_table(paper_table()))
        return
    config = BenchConfig(out=out, models=models + more_models, batch_sizes=batch_sizes, quick=quick, device=device)
    click.echo(format_report(run_bench(config, echo=click.echo)))


@cli.group(cls=_Group)
def wsss() -> None:
    """Weakly supervised segmentation from patch-level labels (WSSS, multi-layer pseudo-supervision).

    \b
    Three resumable stages (re-run a command to continue it):
      1. train-cls     multi-label patch classifier with progressive dropout attention
      2. pseudo-masks  Grad-CAM pseudo masks from layer2, layer3 and layer4 of that classifier
      3. train-seg     HSP-Net on the three masks (loss 0.2/0.2/0.6), saved with the classifier
                       as one gated `wsss_seg` model (gate epsilon 0.1) ready for `cervrt export`
    Labels come from a name,labels CSV (--labels) or, for pixel-annotated data, from the masks.
    """


_WSSS_DATA = click.option("--data", required=True, type=click.Path(file_okay=False),
                          help="Directory with images/ (and masks/ when --labels is not given).")
_WSSS_LABELS = click.option("--labels", default=None, type=click.Path(dir_okay=False),
                            help="name,labels CSV of image-level labels (classes 1..4 joined by ';'); each "
                                 "patch inherits its image's labels. Without it, labels come from masks/.")


@wsss.command(name="train-cls")
@_WSSS_DATA
@_WSSS_LABELS
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory (last.pt, history.json).")
@click.option("--encoder", default="resnet34", show_default=True, type=click.Choice(["resnet34", "resnet101"]))
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=20, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=1e-2, show_default=True, type=float,
              help="Encoder lr (the new layer gets 10x), poly decay.")
@click.option("--patch-size", default=400, show_default=True, type=click.IntRange(32))
@click.option("--stride", default=100, show_default=True, type=click.IntRange(1))
@click.option("--min-foreground", default=0.2, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Keep patches with at least this share of foreground (masks) or tissue (--labels).")
@click.option("--label-min-share", default=0.01, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="With masks: a class labels a patch when it covers at least this share of it.")
@click.option("--pda-decay", default=0.98, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="PDA: mu is multiplied by this every epoch from the 4th (the paper says 0.985).")
@click.option("--pda-floor", default=0.65, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0))
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--encoder-weights", type=click.Path(dir_okay=False),
              help="A torchvision ImageNet ResNet state_dict file.")
@click.option("--time-limit", "time_limit_minutes", default=None, type=float, help="Stop after this many minutes.")
def wsss_train_cls(**options: Any) -> None:
    """Phase 1: train the multi-label patch classifier with progressive dropout attention (PDA).

    PDA (training only) drops the most activated part of each class activation map on the last
    feature map: off for epochs 1-3, then mu = max(floor, decay^(epoch-3)). Loss: multi-label soft
    margin. Re-running with the same --out continues from OUT/last.pt (raise --epochs to go on).
    """
    from cervrt.train.wsss import ClassifierConfig, train_classifier

    train_classifier(ClassifierConfig(**options), log=click.echo)


@wsss.command(name="pseudo-masks")
@click.option("--classifier", required=True, type=click.Path(dir_okay=False), help="Phase-1 last.pt.")
@_WSSS_DATA
@_WSSS_LABELS
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Pseudo-mask directory: images/, masks_layer2/, masks_layer3/, masks/ (layer4), masks_fused/.")
@click.option("--patch-size", default=None, type=click.IntRange(32), help="[the classifier's]")
@click.option("--stride", default=None, type=click.IntRange(1), help="[the classifier run's]")
@click.option("--min-foreground", default=None, type=click.FloatRange(0, 1, min_open=True),
              help="[the classifier run's]")
@click.option("--bg-threshold", default=0.3, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Background where no present class's normalised Grad-CAM reaches this (MTCHI stroma is "
                   "background); glass is always background.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--device", default="auto", show_default=True)
def wsss_pseudo_masks(**options: Any) -> None:
    """Phase 1 -> 2: write Grad-CAM pseudo masks of every labelled patch from three classifier layers.

    Per layer and class: Grad-CAM, min-max normalised; classes absent from the patch's labels are
    zeroed; glass and weak pixels become background; argmax. Patches already written are skipped,
    so an interrupted run continues. When the data has true masks, OUT/pseudo.json reports each
    layer's and the fused masks' Dice and mIoU against them.
    """
    from cervrt.train.wsss import PseudoMaskConfig, generate_pseudo_masks

    summary = generate_pseudo_masks(PseudoMaskConfig(**options), log=click.echo)
    for key, metrics in (summary["truth_metrics"] or {}).items():
        click.echo(f"{key:<7} against the true masks: mIoU {metrics['miou']:.4f}  dice {metrics['dice']:.4f}")
    click.echo(f"wrote {summary['patches']} patches' pseudo masks to {options['out']}/ (summary in pseudo.json)")


@wsss.command(name="train-seg")
@click.option("--pseudo", required=True, type=click.Path(file_okay=False), help="Directory from `wsss pseudo-masks`.")
@click.option("--classifier", required=True, type=click.Path(dir_okay=False), help="Phase-1 last.pt (for the gate).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory (last.pt, wsss_seg.pt).")
@click.option("--encoder", default="resnet34", show_default=True, type=click.Choice(["resnet34", "resnet101"]))
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--loss", default="ce", show_default=True, type=click.Choice(["ce", "ae"]), help="Per-layer loss.")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Encoder lr (other blocks 10x), cosine.")
@click.option("--val-fraction", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Hold out pseudo-mask patches and validate against their (pseudo) masks.")
@click.option("--gate-epsilon", default=0.1, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Classification gate: class k is zeroed in a patch whose class probability is <= this.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0))
@click.option("--device", default="auto", show_default=True)
@click.option("--amp/--no-amp", default=True, show_default=True, help="Mixed precision (CUDA only).")
@click.option("--encoder-weights", type=click.Path(dir_okay=False),
              help="A torchvision ImageNet ResNet state_dict file.")
@click.option("--time-limit", "time_limit_minutes", default=None, type=float, help="Stop after this many minutes.")
def wsss_train_seg(**options: Any) -> None:
    """Phase 2: train HSP-Net on the three pseudo masks and save the gated WSSS model OUT/wsss_seg.pt.

    Loss 0.2 CE(layer2 mask) + 0.2 CE(layer3 mask) + 0.6 CE(layer4 mask), in cervrt's training loop.
    OUT/wsss_seg.pt joins the segmentation weights (OUT/last.pt) and the classifier; its
    gate_epsilon travels into `cervrt export` metadata, where the runtime applies the gate.
    Re-running with the same --out continues from OUT/last.pt.
    """
    from cervrt.train.wsss import SegmenterConfig, train_segmenter

    train_segmenter(SegmenterConfig(**options), log=click.echo)


@cli.command()
@click.argument("slides", nargs=-1, required=True, metavar="SLIDE...")
@click.option("--engine", "model", required=True, type=click.Path(dir_okay=False),
              help="The model: an exported .onnx, a TensorRT .plan or a .pt checkpoint.")
@click.option("--out", required=True, type=click.Path(), help="Output directory (created if needed).")
@click.option("--stride", default=None, type=click.IntRange(1), help="Window stride [a quarter of the patch].")
@click.option("--blend", default="gaussian", show_default=True, type=click.Choice(["mean", "gaussian"]))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--mpp", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Microns per pixel of the slides (overrides the file's; needed for PNG/JPEG at another scale).")
@click.option("--tissue-threshold", default=0.1, show_default=True, type=click.FloatRange(0, 1),
              help="Windows with less tissue than this are not run (0: run every window).")
@click.option("--geojson", is_flag=True, help="Also write NAME.geojson (per-class polygons for QuPath).")
@click.option("--format", "fmt", default="png", show_default=True, type=click.Choice(["png", "tiff"]),
              help="Mask format (tiled pyramidal TIFF is used anyway for masks over 2^30 pixels).")
def infer(slides: tuple[str, ...], model: str, out: str, stride: int | None, blend: str, batch_size: int,
          device: str, mpp: float | None, tissue_threshold: float, geojson: bool, fmt: str) -> None:
    """Segment whole slides: OUT/NAME.mask.png, NAME.overlay.jpg, NAME.json (and NAME.geojson) per slide.

    A bad slide is reported in one line and the others still run; the exit code is 1 if any failed.
    """
    from cervrt.runtime.config import PredictorConfig
    from cervrt.runtime.infer import infer_slides
    from cervrt.runtime.runner import OutputOptions

    config = PredictorConfig(device=device, batch_size=batch_size, stride=stride, blend=blend,
                             tissue_threshold=tissue_threshold, mpp=mpp)
    summary = infer_slides(model, slides, out, config, OutputOptions(fmt=fmt, geojson=geojson), echo=click.echo,
                           error=lambda line: click.echo(line, err=True))
    if summary.failed:
        sys.exit(1)


@cli.command(name="pseudo-label")
@click.option("--classifier", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint of the patch classifier M (--arch classifier, or ensemble_a).")
@click.option("--weak-data", required=True, type=click.Path(file_okay=False),
              help="Directory with images/ of the weak slides.")
@click.option("--labels", required=True, type=click.Path(dir_okay=False), help="Image-level labels CSV (name,labels).")
@click.option("--np", "np_total", default=4000, show_default=True, type=int, help="N_p: at most this many patches.")
@click.option("--keep", default=50.0, show_default=True, type=float, help="r: percentage of S_p kept per class.")
@click.option("--stride", default=100, show_default=True, type=int, help="Window stride (the patch size is M's).")
@click.option("--min-tissue", default=0.2, show_default=True, type=float, help="Skip windows with less tissue.")
@click.option("--batch-size", default=16, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Writes OUT/pseudo.csv and pseudo.json.")
def pseudo_label_command(**options: Any) -> None:
    """Pseudo-label patches of image-level labelled slides (MTCHI Algorithm 1).

    Ranks overlapping windows of each slide by M's confidence for each of its labelled classes,
    takes the first Np/(4 c_i) per class, keeps the most confident r% per class and writes the patch
    list (slide,y,x,size,pseudo_label,confidence) for `cervrt train --pseudo-labels`.
    """
    from cervrt.train.pseudo_label import PseudoLabelConfig, pseudo_label

    summary = pseudo_label(PseudoLabelConfig(**options))
    click.echo(f"kept {summary['total_kept']} patches per class {summary['kept']} of S_p {summary['s_p']}; "
               f"written to {options['out']}/pseudo.csv")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="cervrt")


if __name__ == "__main__":
    sys.exit(main())
