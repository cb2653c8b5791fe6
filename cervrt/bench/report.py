"""The benchmark report: ``report.json`` (everything), ``report.md`` (the tables) and two PNG plots.

- ``throughput_vs_macs.png``: patches/s (the best batch size) against MACs per patch, one point per
  model x engine x precision;
- ``accuracy_vs_throughput.png``: Dice against the ground truth and argmax agreement with the FP32
  torch model, against patches/s.

Plots use matplotlib's Agg backend (no display). Every file is written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cervrt._io import atomic_path, optional_import, write_json

__all__ = ["PLOTS", "best_latency", "format_report", "write_report"]

PLOTS = ("throughput_vs_macs.png", "accuracy_vs_throughput.png")
_MISSING = "--"
_STAGES = ("read", "tissue", "preprocess", "engine", "fuse", "write")


def _num(value: Any, fmt: str, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _MISSING
    return format(value / scale, fmt)


def best_latency(row: dict[str, Any]) -> dict[str, Any] | None:
    """The timed batch size with the highest throughput, or None."""
    timed = [t for t in row.get("latency", []) if "patches_per_s" in t]
    return max(timed, key=lambda t: t["patches_per_s"]) if timed else None


def _si(value: Any) -> str:
    """1234 -> 1.23K, 5.9e7 -> 59.34M, 6.4e10 -> 63.99G; None -> --."""
    if value is None:
        return _MISSING
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:g}"


def _speed_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | engine (device) | params | MACs@384 | MACs@patch | batch | p50 ms | p90 ms | spread "
             "| patches/s | Mpx/s | RSS MiB start -> peak |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['label']} | failed: {row['error']} |" + " |" * 10)
            continue
        head = (f"| {row['label']} | {row['provider']} ({row['device']}) | {_si(row['params'])} "
                f"| {_si(row['macs_384'])} | {_si(row['macs_patch'])} @{row['patch_size']}")
        memory = f"{_num(row['memory']['start_rss_mib'], '.0f')} -> {_num(row['memory']['peak_rss_mib'], '.0f')}"
        for t in row["latency"]:
            if "skipped" in t:
                lines.append(f"{head} | {t['batch']} | {t['skipped']} |" + " |" * 5 + f" {memory} |")
                continue
            lines.append(f"{head} | {t['batch']} | {t['p50_ms']:.1f} | {t['p90_ms']:.1f} | {t['spread']:.0%} "
                         f"| {t['patches_per_s']:.2f} | {t['mpx_per_s']:.3f} | {memory} |")
    return lines


def _e2e_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | patches run/skipped | read s | tissue s | preprocess s | engine s | fuse s | write s | total s "
             "| e2e / engine | agreement (tissue) | Dice | mIoU | AP | WP |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if "error" in row:
            continue
        e2e, acc, agree = row["end_to_end"], row["accuracy"], row.get("agreement") or {}
        sec = e2e["seconds"]
        stages = " | ".join(_num(sec.get(k), ".2f") for k in _STAGES)
        lines.append(f"| {row['label']} | {e2e['patches_run']}/{e2e['patches_skipped']} | {stages} "
                     f"| {e2e['wall_seconds']:.2f} | {_num(e2e['end_to_end_over_engine'], '.2f')}x "
                     f"| {_num(agree.get('tissue'), '.4f')} | {_num(acc['dice'], '.4f')} | {_num(acc['miou'], '.4f')} "
                     f"| {_num(acc['ap'], '.4f')} | {_num(acc['wp'], '.4f')} |")
    return lines


def _fastpath_table(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    lines = ["## CPU fast path (ONNX Runtime and OpenVINO on the CPU)", ""]
    if "absent" in section:
        return [*lines, f"Not measured: {section['absent']}.", ""]
    lines += [f"Model: `{section['model']}` (and its INT8 graph). Timed in interleaved rounds on one tissue batch; "
              "agreement: share of tissue pixels labelled as ONNX Runtime FP32 labels them on the synthetic test "
              "slide(s); Dice against their ground truth.", "",
              "| engine | runs as | patches/s | vs ORT FP32 | agreement with FP32 | Dice | s / slide | classes |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in section["rows"]:
        if "absent" in r:
            lines.append(f"| {r['engine']} | absent: {r['absent']} |" + " |" * 6)
            continue
        lines.append(f"| {r['engine']} | {r['runs']} | {r['patches_per_s']:.2f} | {r['ratio']:.2f}x "
                     f"| {_num(r['agreement'], '.2%')} | {_num(r['dice'], '.4f')} | {r['seconds_per_slide']:.2f} "
                     f"| {','.join(map(str, r['classes_predicted']))} |")
    return [*lines, ""]


def _stride_table(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    lines = ["## Accuracy beside cost: strides 100, 200 and 400", ""]
    if "absent" in section:
        return [*lines, f"Not measured: {section['absent']}.", ""]
    lines += [f"Model: `{section['model']}` through the Predictor on the synthetic test slide(s).", "",
              "| paper stride | stride used | overlap | windows run | Dice | s / slide |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r in section["rows"]:
        lines.append(f"| {r['paper_stride']} | {r['stride']} | {r['overlap']:.0f}x | {r['patches_run']} "
                     f"| {_num(r['dice'], '.4f')} | {r['seconds_per_slide']:.2f} |")
    notes = sorted({r["scaled"] for r in section["rows"] if r["scaled"]})
    if notes:
        lines += ["", f"The model's patch is {section['rows'][0]['patch_size']} px, under the papers' 400: the "
                  "strides are scaled to it (same overlaps)."]
    return [*lines, ""]


def _header(report: dict[str, Any]) -> list[str]:
    m, s = report["machine"], report["settings"]
    gpus = ", ".join(m["gpus"]) or "none found"
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [f"# cervrt bench ({s['name']})", "",
             f"Machine: {m['cpu']}, {m['usable_cores']} usable cores, {m['memory_gb']} GB RAM, GPU: {gpus}. "
             f"Load average (1 min) {m['load_avg'][0]} at the start, {m['load_avg_end'][0]} at the end.",
             f"Versions: {versions}.", "",
             f"Settings: {s['warmup']} warm-up + {s['repeats']} timed runs per batch size {s['batch_sizes']}; "
             f"spread = (max - min) / p50; end to end: {s['slides']} synthetic slide(s) of "
             f"{s['slide_size'][0]}x{s['slide_size'][1]} through the Predictor at batch {max(s['batch_sizes'])}.",
             "", report["shared_machine"]]
    if report.get("note"):
        lines += ["", report["note"]]
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The markdown of ``report``: header, speed table, end-to-end and accuracy table."""
    rows = report["models"]
    lines = [*_header(report), "", "## Engine latency and throughput", "", *_speed_table(rows), "",
             "## End to end (seconds summed over the test slides) and accuracy", "", *_e2e_table(rows), "",
             "Agreement: share of tissue pixels (ground truth != 0) whose label equals the FP32 torch model's "
             "(`--` without its checkpoint). Dice, mIoU, AP, WP against the synthetic ground truth (cervrt.metrics).",
             "", *_fastpath_table(report.get("cpu_fastpath")), *_stride_table(report.get("strides"))]
    return "\n".join(lines) + "\n"


def _value(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _scatter(ax: Any, rows: list[dict[str, Any]], x: Any, y: Any, hollow: bool = False) -> None:
    """One point per row in the row's colour (rows without both figures left out); hollow squares or discs."""
    for k, row in enumerate(rows):
        a, b = _value(x(row)), _value(y(row))
        if a is None or b is None:
            continue
        color = f"C{k % 10}"
        if hollow:
            ax.scatter([a], [b], s=90, marker="s", facecolors="none", edgecolors=color, linewidths=1.5)
        else:
            ax.scatter([a], [b], s=60, color=color, label=row["label"])


def _finish(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_xlim(left=0, right=ax.get_xlim()[1] * 1.08)
    ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1.05) if "Dice" in ylabel else ax.get_ylim()[1] * 1.08)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _speed(row: dict[str, Any]) -> float:
    return best_latency(row)["patches_per_s"]


def _plots(report: dict[str, Any], out: Path) -> None:
    optional_import("matplotlib", "train").use("Agg")
    plt = optional_import("matplotlib.pyplot", "train")
    rows = [r for r in report["models"] if "error" not in r and best_latency(r)]
    title = f"cervrt bench on {report['machine']['cpu']} ({report['machine']['usable_cores']} cores)"
    fig, ax = plt.subplots(figsize=(9, 4.5))
    _scatter(ax, rows, lambda r: None if r.get("macs_patch") is None else r["macs_patch"] / 1e9, _speed)
    _finish(ax, "GMACs per patch (at the patch size)", "patches/s (engine only, best batch size)", title)
    _save(fig, out / PLOTS[0], plt)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    _scatter(ax, rows, _speed, lambda r: r["accuracy"]["dice"])
    _scatter(ax, rows, _speed, lambda r: (r.get("agreement") or {}).get("tissue"), hollow=True)
    _finish(ax, "patches/s (engine only, best batch size)",
            "Dice vs ground truth (disc)\nagreement with FP32 torch (square)", title)
    _save(fig, out / PLOTS[1], plt)


def _save(fig: Any, target: Path, plt: Any) -> None:
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def write_report(report: dict[str, Any], out: Path) -> None:
    """``report.json`` (strict JSON: NaN written as null), ``report.md`` and the plots into ``out``."""
    write_json(out / "report.json", report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(format_report(report))
    _plots(report, out)
