"""The shipped manifest tells the truth about what the bundle was built from, even when an input
edit changes no packed byte (early cutoff). Real doit on a real tiny model."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from helpers import make_project

pytestmark = pytest.mark.slow


def test_calibration_edit_with_unchanged_thresholds_refreshes_the_manifest(
        tmp_path: Path, tiny_inputs: Path) -> None:
    project = make_project(tmp_path, tiny_inputs)
    assert project.doit("build:tiny").code == 0
    calibration = project.inputs / "calibration.jsonl"
    key = "bundles/tiny/calibration.jsonl"
    manifest = project.dist() / "manifest.json"
    thresholds = project.root / "build/tiny/thresholds/thresholds.json"
    before, cuts = json.loads(manifest.read_text()), thresholds.read_bytes()
    assert before["inputs"][key] == hashlib.sha256(calibration.read_bytes()).hexdigest()

    with open(calibration, "a") as f:  # a blank line: new bytes, the same rows, the same cuts
        f.write("\n")
    run = project.doit("build:tiny")
    assert run.code == 0, run.output
    assert "thresholds:tiny" in run.executed
    assert thresholds.read_bytes() == cuts  # early cutoff: nothing packed changed

    after = json.loads(manifest.read_text())
    assert after["inputs"][key] == hashlib.sha256(calibration.read_bytes()).hexdigest() \
        != before["inputs"][key]
    for stage in ("weights", "tokenizer", "labels", "thresholds"):  # every recorded digest is current
        stamp = json.loads((project.root / "build/tiny/.stamps" / f"{stage}.json").read_text())
        for name, digest in stamp["inputs"].items():
            if not name.startswith("@"):
                assert after["inputs"][name] == digest, name
    assert project.doit("build:tiny").executed == set()  # and then it is up to date
