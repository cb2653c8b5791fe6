"""``cervrt bench``: FLOPs, throughput and accuracy side by side, measured in one run on this machine.

- ``paper_table`` / ``format_paper_table``: the papers' parameter and FLOP figures beside cervrt's counts;
- ``BenchConfig`` + ``run_bench``: every model x engine x precision timed per batch size, run end to end
  over synthetic slides with ground truth, and reported as ``report.json``, ``report.md`` and PNG plots;
  with the CPU fast path (``cervrt.bench.fastpath``) and Dice and seconds per slide at strides 100, 200
  and 400 (``cervrt.bench.strides``); without models, on a short synthetic training (``cervrt.bench.trained``).

Importing this package imports neither torch nor onnxruntime; the parts that need them import them
when they run.
"""

from __future__ import annotations

from cervrt.bench.config import FULL, QUICK, BenchConfig, BenchSettings, parse_batch_sizes
from cervrt.bench.paper import PAPER_MODELS, format_paper_table, paper_table
from cervrt.bench.report import format_report
from cervrt.bench.runner import run_bench

__all__ = ["FULL", "PAPER_MODELS", "QUICK", "BenchConfig", "BenchSettings", "format_paper_table", "format_report",
           "paper_table", "parse_batch_sizes", "run_bench"]
