"""Reliability of `kiln validate` + `doit build` against corrupted build inputs.

    .venv/bin/python bench/reliability/inputs.py

Runs every case of tests/stages/input_corpus.py (config.json, label files, safetensors headers,
sharded indexes, calibration rows, tokenizer files, each spoilt one way) on a fresh copy of a real
tiny project: validation first, then the PyTorch stages in-process as `doit build` runs them.
Prints one row per case and the totals: tried / clear one-line errors / tracebacks / silently
accepted. A clear error is a KilnError whose every line is one problem that names the file.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests" / "stages"), str(REPO / "tests")]

from input_corpus import CASES, judge  # noqa: E402

from helpers import make_inputs, make_project  # noqa: E402


def main() -> None:
    counts = {"clear": 0, "unclear": 0, "traceback": 0, "accepted": 0}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs"
        make_inputs(inputs)
        baseline = make_project(Path(tmp) / "baseline", inputs)
        os.chdir(baseline.root)
        assert judge(baseline.spec).outcome == "accepted", "the unspoilt project must build"
        print(f"{'case':<44} {'outcome':<20} message")
        for i, case in enumerate(CASES):
            project = make_project(Path(tmp) / f"p{i}", inputs)
            case.corrupt(project.inputs)
            os.chdir(project.root)
            verdict = judge(project.spec)
            first = verdict.message.strip().splitlines()[-1] if verdict.message.strip() else ""
            if verdict.outcome == "traceback":
                counts["traceback"] += 1
            elif verdict.outcome == "accepted":
                counts["accepted"] += 1
            elif verdict.one_line or verdict.outcome == "refused-at-validate":
                counts["clear"] += 1
            else:
                counts["unclear"] += 1
            print(f"{case.name:<44} {verdict.outcome:<20} {first[:150]}")
    print()
    print(f"{'corrupted inputs tried':>23} {'clear one-line errors':>22} {'multi-line':>11} "
          f"{'tracebacks':>11} {'silently accepted':>18}")
    print(f"{len(CASES):>23} {counts['clear']:>22} {counts['unclear']:>11} {counts['traceback']:>11} "
          f"{counts['accepted']:>18}")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
