"""Two builds in one project at once: both succeed, each task is built once, nothing is left over.

Before task locks, the second `doit build` swept the first one's staging directory as debris of a
killed writer, and the first failed with doit's raw `PythonAction Error`. Now the second waits
for the task (naming the holder) and then finds it built.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from helpers import BIN, make_project

pytestmark = pytest.mark.slow

ALL = {"weights:tiny", "tokenizer:tiny", "labels:tiny", "thresholds:tiny", "package:tiny-pytorch"}


def test_two_concurrent_builds_in_one_project(tmp_path: Path, tiny_inputs: Path) -> None:
    project = make_project(tmp_path / "p", tiny_inputs)
    calibration = project.inputs / "calibration.jsonl"
    calibration.write_text(calibration.read_text() * 20)  # a long thresholds task to overlap in
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KILN_CACHE_URI": "off"}
    procs = [subprocess.Popen([str(BIN / "doit"), "build:tiny"], cwd=project.root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out
        assert "PythonAction Error" not in out and "Traceback" not in out, out
    ran = [set(re.findall(r"^(\S+): (?:\d+ tensors|calibrated|\d+ files ->)", o, re.M))
           for o in outputs]
    assert not ran[0] & ran[1], "a stage ran twice"
    waited = "\n".join(outputs)
    assert "built by a concurrent run" in waited or not (ran[0] and ran[1])
    again = subprocess.run([str(BIN / "doit"), "build:tiny"], cwd=project.root, env=env,
                           capture_output=True, text=True, timeout=600)
    assert set(re.findall(r"^-- (\S+)", again.stdout + again.stderr, re.M)) == ALL
    debris = [p for p in (project.root / "build" / "tiny").iterdir() if p.name.startswith(".")
              and p.name != ".stamps"]
    assert debris == []
