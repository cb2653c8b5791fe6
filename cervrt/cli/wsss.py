"""``cervrt wsss``: weakly supervised segmentation in three resumable stages.

Defaults come from ``ClassifierConfig``, ``PseudoMaskConfig`` and ``SegmenterConfig``, encoders from
the model registry.
"""

from __future__ import annotations

from typing import Any

import click

from cervrt.cli._base import CONTEXT, CervrtGroup, default
from cervrt.devices import DEVICE_CHOICES
from cervrt.models import get_spec
from cervrt.train.losses import LOSS_NAMES
from cervrt.train.wsss import ClassifierConfig, PseudoMaskConfig, SegmenterConfig

__all__ = ["wsss"]

_DEVICES = ", ".join(DEVICE_CHOICES) + "."
_ENCODERS = [str(e) for e in get_spec("hspnet").choices["encoder"]]


@click.group(cls=CervrtGroup, context_settings=CONTEXT)
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


def _c(name: str) -> Any:
    return default(ClassifierConfig, name)


@wsss.command(name="train-cls")
@_WSSS_DATA
@_WSSS_LABELS
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory (last.pt, history.json).")
@click.option("--encoder", default=_c("encoder"), show_default=True, type=click.Choice(_ENCODERS))
@click.option("--epochs", default=_c("epochs"), show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=_c("batch_size"), show_default=True, type=click.IntRange(1))
@click.option("--lr", default=_c("lr"), show_default=True, type=float,
              help="Encoder lr, poly decay (the authors' 1e-2 assumes pretrained --encoder-weights; from "
                   "scratch use 1e-3 with --head-lr-mult 1).")
@click.option("--head-lr-mult", default=_c("head_lr_mult"), show_default=True, type=click.FloatRange(0, min_open=True),
              help="The new 1x1 layer's lr as a multiple of --lr.")
@click.option("--patch-size", default=_c("patch_size"), show_default=True, type=click.IntRange(32))
@click.option("--stride", default=_c("stride"), show_default=True, type=click.IntRange(1))
@click.option("--min-foreground", default=_c("min_foreground"), show_default=True,
              type=click.FloatRange(0, 1, min_open=True),
              help="Keep patches with at least this share of foreground (masks) or tissue (--labels).")
@click.option("--label-min-share", default=_c("label_min_share"), show_default=True,
              type=click.FloatRange(0, 1, max_open=True),
              help="With masks: a class labels a patch when it covers at least this share of it.")
@click.option("--pda-decay", default=_c("pda_decay"), show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="PDA: mu is multiplied by this every epoch from the 4th (the paper says 0.985).")
@click.option("--pda-floor", default=_c("pda_floor"), show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--seed", default=_c("seed"), show_default=True, type=int)
@click.option("--workers", default=_c("workers"), show_default=True, type=click.IntRange(0))
@click.option("--device", default=_c("device"), show_default=True, help=_DEVICES)
@click.option("--encoder-weights", type=click.Path(dir_okay=False),
              help="A torchvision ImageNet ResNet state_dict file.")
@click.option("--time-limit", "time_limit_minutes", default=None, type=float, help="Stop after this many minutes.")
def wsss_train_cls(**options: Any) -> None:
    """Phase 1: train the multi-label patch classifier with progressive dropout attention (PDA).

    PDA (training only) drops the most activated part of each class activation map on the last
    feature map: off for epochs 1-3, then mu = max(floor, decay^(epoch-3)). Loss: multi-label soft
    margin. Re-running with the same --out continues from OUT/last.pt (raise --epochs to go on).
    """
    from cervrt.train.wsss import train_classifier

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
@click.option("--bg-threshold", default=default(PseudoMaskConfig, "bg_threshold"), show_default=True,
              type=click.FloatRange(0, 1, max_open=True),
              help="Also background where no present class's normalised Grad-CAM reaches this; glass is "
                   "always background (0: glass only, the paper's and the better on synthetic data).")
@click.option("--batch-size", default=default(PseudoMaskConfig, "batch_size"), show_default=True,
              type=click.IntRange(1))
@click.option("--device", default=default(PseudoMaskConfig, "device"), show_default=True)
def wsss_pseudo_masks(**options: Any) -> None:
    """Phase 1 -> 2: write Grad-CAM pseudo masks of every labelled patch from three classifier layers.

    Per layer and class: Grad-CAM, min-max normalised; classes absent from the patch's labels are
    zeroed; glass and weak pixels become background; argmax. Patches already written are skipped,
    so an interrupted run continues. When the data has true masks, OUT/pseudo.json reports each
    layer's and the fused masks' Dice and mIoU against them.
    """
    from cervrt.train.wsss import generate_pseudo_masks

    summary = generate_pseudo_masks(PseudoMaskConfig(**options), log=click.echo)
    for key, metrics in (summary["truth_metrics"] or {}).items():
        click.echo(f"{key:<7} against the true masks: mIoU {metrics['miou']:.4f}  dice {metrics['dice']:.4f}")
    click.echo(f"wrote {summary['patches']} patches' pseudo masks to {options['out']}/ (summary in pseudo.json)")


def _s(name: str) -> Any:
    return default(SegmenterConfig, name)


@wsss.command(name="train-seg")
@click.option("--pseudo", required=True, type=click.Path(file_okay=False), help="Directory from `wsss pseudo-masks`.")
@click.option("--classifier", required=True, type=click.Path(dir_okay=False), help="Phase-1 last.pt (for the gate).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory (last.pt, wsss_seg.pt).")
@click.option("--encoder", default=_s("encoder"), show_default=True, type=click.Choice(_ENCODERS))
@click.option("--epochs", default=_s("epochs"), show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=_s("batch_size"), show_default=True, type=click.IntRange(1))
@click.option("--loss", default=_s("loss"), show_default=True, type=click.Choice(LOSS_NAMES), help="Per-layer loss.")
@click.option("--lr", default=_s("lr"), show_default=True, type=float, help="Encoder lr (other blocks 10x), cosine.")
@click.option("--val-fraction", default=_s("val_fraction"), show_default=True,
              type=click.FloatRange(0, 1, max_open=True),
              help="Hold out pseudo-mask patches and validate against their (pseudo) masks.")
@click.option("--gate-epsilon", default=_s("gate_epsilon"), show_default=True,
              type=click.FloatRange(0, 1, max_open=True),
              help="Classification gate: class k is zeroed in a patch whose class probability is <= this.")
@click.option("--seed", default=_s("seed"), show_default=True, type=int)
@click.option("--workers", default=_s("workers"), show_default=True, type=click.IntRange(0))
@click.option("--device", default=_s("device"), show_default=True)
@click.option("--amp/--no-amp", default=_s("amp"), show_default=True, help="Mixed precision (CUDA only).")
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
    from cervrt.train.wsss import train_segmenter

    train_segmenter(SegmenterConfig(**options), log=click.echo)
