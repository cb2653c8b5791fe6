"""Fold the pytest and compute-sanitizer results of ``gpu_acceptance.sh`` into its one JSON (atomically).

    python benchmarks/gpu_acceptance_fold.py OUT_DIR
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def _pytest(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return {**counts, "failed": failed}


def _memcheck(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    rc = re.search(r"memcheck rc=(\d+)", text)
    errors = re.search(r"ERROR SUMMARY: (\d+) error", text)
    return {"ran": rc is not None, "rc": int(rc.group(1)) if rc else None,
            "errors": int(errors.group(1)) if errors else None, "tail": text.strip().splitlines()[-6:]}


def main(out: Path) -> int:
    target = out / "gpu_acceptance.json"
    summary = json.loads(target.read_text()) if target.is_file() else {"sections": [], "failed": ["acceptance"]}
    summary["pytest"] = _pytest(out / "pytest.xml")
    summary["memcheck"] = _memcheck(out / "memcheck.txt")
    partial = target.with_name(target.name + ".part")
    partial.write_text(json.dumps(summary, indent=2, default=str))
    partial.replace(target)
    print(json.dumps({"failed": summary.get("failed"), "pytest": summary["pytest"], "memcheck": summary["memcheck"]},
                     default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
