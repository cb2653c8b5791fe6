"""``cervrt train``, ``cervrt eval`` and ``cervrt pseudo-label``: the supervised training side.

Defaults come from ``TrainConfig``, ``PseudoLabelConfig`` and ``PredictorConfig``, architectures and
encoders from the model registry.
"""

from __future__ import annotations

import math
from typing import Any

import click

from cervrt.cli._base import default, explicit, values
from cervrt.devices import DEVICE_CHOICES
from cervrt.errors import CervrtError
from cervrt.models import get_spec, list_models
from cervrt.runtime.config import Blend, PredictorConfig
from cervrt.train.loop import TrainConfig
from cervrt.train.losses import LOSS_NAMES
from cervrt.train.pseudo_label import PseudoLabelConfig

__all__ = ["evaluate", "pseudo_label_command", "train"]

_TRAIN_OVERRIDES = ["epochs", "batch_size", "lr", "workers", "device", "amp", "time_limit_minutes"]
_DEVICES = ", ".join(DEVICE_CHOICES) + "."


def _encoders() -> list[str]:
    """Every encoder some registered architecture offers, in registry order."""
    found: dict[str, None] = {}
    for name in list_models():
        found.update(dict.fromkeys(map(str, get_spec(name).choices.get("encoder", ()))))
    return list(found)


def _t(name: str) -> Any:
    return default(TrainConfig, name)


@click.command()
@click.option("--data", type=click.Path(), help="Dataset directory (images/ and masks/).")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory for last.pt, best.pt, history.json.")
@click.option("--arch", default=_t("arch"), show_default=True, help=f"Architecture: {', '.join(list_models())}.")
@click.option("--encoder", default=_t("encoder"),
              help=f"Encoder: {' or '.join(_encoders())} (default: the architecture's).")
@click.option("--epochs", default=_t("epochs"), show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=_t("batch_size"), show_default=True, type=click.IntRange(1))
@click.option("--loss", default=_t("loss"), show_default=True, type=click.Choice(LOSS_NAMES),
              help="Segmentation loss.")
@click.option("--lr", default=_t("lr"), show_default=True, type=float, help="Encoder learning rate (cosine annealed).")
@click.option("--head-lr-mult", default=_t("head_lr_mult"), show_default=True, type=float,
              help="Other blocks' lr / encoder lr.")
@click.option("--momentum", default=_t("momentum"), show_default=True, type=float)
@click.option("--weight-decay", default=_t("weight_decay"), show_default=True, type=float)
@click.option("--patch-size", default=_t("patch_size"), show_default=True, type=click.IntRange(32),
              help="Training patch side.")
@click.option("--stride", default=_t("stride"), show_default=True, type=click.IntRange(1),
              help="Patch extraction stride.")
@click.option("--min-foreground", default=_t("min_foreground"), show_default=True, type=click.FloatRange(0, 1),
              help="Discard patches with less foreground than this.")
@click.option("--val-fraction", default=_t("val_fraction"), show_default=True, type=float,
              help="Share of regions held out.")
@click.option("--val-stride", default=_t("val_stride"), type=click.IntRange(1),
              help="Validation window stride [patch size].")
@click.option("--seed", default=_t("seed"), show_default=True, type=int)
@click.option("--workers", default=_t("workers"), show_default=True, type=click.IntRange(0), help="DataLoader workers.")
@click.option("--device", default=_t("device"), show_default=True, help=_DEVICES)
@click.option("--amp/--no-amp", default=_t("amp"), show_default=True, help="Mixed precision (CUDA only).")
@click.option("--encoder-weights", type=click.Path(dir_okay=False),
              help="A torchvision ImageNet ResNet state_dict file to start the encoder from.")
@click.option("--mpp", default=_t("mpp"), show_default=True, type=float, help="Microns per pixel of the data.")
@click.option("--time-limit", "time_limit_minutes", default=_t("time_limit_minutes"), type=float,
              help="Stop after the epoch in which this many minutes have passed.")
@click.option("--resume", type=click.Path(dir_okay=False), help="Continue from RUN/last.pt (its settings are kept).")
@click.option("--pseudo-labels", type=click.Path(dir_okay=False),
              help="S_p patch list from `cervrt pseudo-label`: trains the patch classifier only (classifier, "
                   "or ensemble_a's stage 1).")
@click.option("--weak-data", type=click.Path(file_okay=False), help="With --pseudo-labels: the weak images' directory.")
@click.option("--cls-epochs", default=_t("cls_epochs"), type=click.IntRange(1),
              help="ensemble_a two-stage training: stage 1 (encoder + classifier) epochs [--epochs]; "
                   "stage 2 trains the segmentation layers for --epochs.")
@click.pass_context
def train(ctx: click.Context, resume: str | None, **options: Any) -> None:
    """Train a segmentation model on pixel-annotated regions.

    Defaults follow the HSP-Net paper: SGD with momentum 0.9, the encoder at lr 1e-3 and the other
    blocks at 10x, cosine annealing, 400 px patches at stride 100 with at least 20% foreground.
    """
    from cervrt.train.loop import train as run_train

    if resume:
        result = run_train(resume=resume, overrides=explicit(ctx, _TRAIN_OVERRIDES))
    else:
        if not options["data"] or not options["out"]:
            raise CervrtError("train needs --data DIR and --out RUN (or --resume RUN/last.pt)")
        result = run_train(TrainConfig(**options))
    score = result.best_metrics.get(result.score_key, math.nan)
    click.echo(f"best epoch {result.best_epoch}: {result.score_key} {score:.4f}; "
               f"checkpoints in {result.out}/ (last.pt, best.pt), history in {result.out}/history.json")


@click.command(name="eval")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="A cervrt checkpoint.")
@click.option("--data", required=True, type=click.Path(), help="Dataset directory (images/ and masks/).")
@click.option("--stride", default=None, type=click.IntRange(1), help="Window stride [a quarter of the patch].")
@click.option("--blend", default=default(PredictorConfig, "blend"), show_default=True,
              type=click.Choice(values(Blend)))
@click.option("--batch-size", default=default(PredictorConfig, "batch_size"), show_default=True,
              type=click.IntRange(1))
@click.option("--device", default=default(PredictorConfig, "device"), show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the metrics here.")
def evaluate(model_path: str, data: str, stride: int | None, blend: str, batch_size: int, device: str,
             json_out: str | None) -> None:
    """Predict whole regions by sliding window and print Dice, mIoU, AP, WP, FwIoU and per-class IoU."""
    from cervrt.train.evaluate import evaluate_checkpoint

    evaluate_checkpoint(model_path, data, stride=stride, blend=blend, batch_size=batch_size, device=device,
                        json_out=json_out, echo=click.echo)


def _p(name: str) -> Any:
    return default(PseudoLabelConfig, name)


@click.command(name="pseudo-label")
@click.option("--classifier", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint of the patch classifier M (--arch classifier, or ensemble_a).")
@click.option("--weak-data", required=True, type=click.Path(file_okay=False),
              help="Directory with images/ of the weak slides.")
@click.option("--labels", required=True, type=click.Path(dir_okay=False), help="Image-level labels CSV (name,labels).")
@click.option("--np", "np_total", default=_p("np_total"), show_default=True, type=int,
              help="N_p: at most this many patches.")
@click.option("--keep", default=_p("keep"), show_default=True, type=float, help="r: percentage of S_p kept per class.")
@click.option("--stride", default=_p("stride"), show_default=True, type=int,
              help="Window stride (the patch size is M's).")
@click.option("--min-tissue", default=_p("min_tissue"), show_default=True, type=float,
              help="Skip windows with less tissue.")
@click.option("--batch-size", default=_p("batch_size"), show_default=True, type=int)
@click.option("--device", default=_p("device"), show_default=True, help=_DEVICES)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Writes OUT/pseudo.csv and pseudo.json.")
def pseudo_label_command(**options: Any) -> None:
    """Pseudo-label patches of image-level labelled slides (MTCHI Algorithm 1).

    Ranks overlapping windows of each slide by M's confidence for each of its labelled classes,
    takes the first Np/(4 c_i) per class, keeps the most confident r% per class and writes the patch
    list (slide,y,x,size,pseudo_label,confidence) for `cervrt train --pseudo-labels`.
    """
    from cervrt.train.pseudo_label import pseudo_label

    summary = pseudo_label(PseudoLabelConfig(**options))
    click.echo(f"kept {summary['total_kept']} patches per class {summary['kept']} of S_p {summary['s_p']}; "
               f"written to {options['out']}/pseudo.csv")
