"""What the benchmark ran on: CPU model and cores, GPU (if any), load, and the library versions.

Versions come from the installed distributions' metadata (importlib.metadata), so describing the
machine imports neither torch nor onnxruntime. The GPU is named by ``nvidia-smi`` when it is on
PATH; without it the report says "none found".
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["DISTRIBUTIONS", "cpu_model", "gpu_names", "host_tag", "library_versions", "machine_info"]

#: Distributions whose versions a report records (missing ones are left out).
DISTRIBUTIONS = ("cervrt", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "cuda-python",
                 "opencv-python-headless", "tifffile", "matplotlib", "monai")


def cpu_model() -> str:
    """The ``model name`` of /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def gpu_names() -> list[str]:
    """GPU names from ``nvidia-smi`` (empty when it is missing or finds none)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def library_versions() -> dict[str, str]:
    """Installed versions of :data:`DISTRIBUTIONS` (plus Python)."""
    versions = {"python": platform.python_version()}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """CPU, cores, GPUs, memory, load average and library versions of this machine."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        pages = 0
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "usable_cores": _usable_cores(),
            "gpus": gpu_names(), "memory_gb": round(pages / 2**30, 1), "platform": platform.platform(),
            "load_avg": [round(v, 2) for v in load], "versions": library_versions()}


def host_tag(versions: dict[str, str] | None = None, keys: tuple[str, ...] = ("numpy",)) -> str:
    """A file-name slug naming the CPU and the given library versions, e.g. ``intel-xeon-processor-numpy2.4.6``."""
    cpu = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$", "", cpu_model().lower())
    parts = [re.sub(r"[^a-z0-9.]+", "-", cpu).strip("-") or "cpu"]
    versions = versions or library_versions()
    parts += [f"{key.replace('onnxruntime-gpu', 'ort').replace('onnxruntime', 'ort')}{versions[key].split('+')[0]}"
              for key in keys if key in versions]
    return "-".join(parts)
