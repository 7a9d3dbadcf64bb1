"""A single-label model predicts exactly one label per text, or abstains: in the calibrated
thresholds, the parity gate's flips, the smoke test, the model card and `predict`.

Before decisions.py applied the single-label rule, cuts were fitted per label on softmax scores
and every label over its cut was predicted (a real 5-label MPNet predicted 4 of 5 per text).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import LABELS, SPEC, Project, make_project
from modelkiln.artifacts.extract import safe_extract

pytestmark = pytest.mark.slow

SINGLE = SPEC.replace("task: multi-label-classification", "task: single-label-classification") \
    + """\
  onnx:
    quantize: {{mode: dynamic, weight_type: int8, per_channel: true}}
    parity: {{atol: 1.0e-4, max_decision_flip_rate: 0.2}}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Project:
    from modelkiln import demo

    inputs = tmp_path_factory.mktemp("single-inputs")
    held_out = demo.make_checkpoint(inputs / "checkpoint", LABELS, multi=False, seed=1,
                                    hidden=64, layers=2, steps=150, rows=300)
    demo.write_label_files(inputs, LABELS)
    demo.write_jsonl(inputs / "calibration.jsonl", held_out[:120])
    p = make_project(tmp_path_factory.mktemp("single"), inputs, spec=SINGLE)
    run = p.doit("build:tiny", timeout=1200)
    assert run.code == 0, run.output
    return p


def test_predict_gives_at_most_one_label_per_text(built: Project, tmp_path: Path) -> None:
    safe_extract(built.dist("onnx") / "bundle.tar.gz", tmp_path / "b")
    rows = (built.root / "bundles/tiny/calibration.jsonl").read_text().splitlines()
    lines = "".join(json.dumps({"text": json.loads(r)["text"]}) + "\n" for r in rows)
    done = subprocess.run([sys.executable, "-m", "modelkiln.runtime", "predict",
                           str(tmp_path / "b")], input=lines, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    answers = [json.loads(x) for x in done.stdout.splitlines()]
    assert max(len(a["labels"]) for a in answers) == 1
    hits = sum(a["labels"] == json.loads(r)["labels"] for a, r in zip(answers, rows, strict=True))
    assert hits > len(rows) / 2  # the model learned something, and the rule keeps it


def test_smoke_card_and_signature_state_the_rule(built: Project) -> None:
    smoke = json.loads((built.root / "build/tiny/smoke/smoke.json").read_text())
    assert all(len(p) <= 1 for p in smoke["predicted"])
    manifest = json.loads((built.dist("onnx") / "manifest.json").read_text())
    assert manifest["signature"]["decision"].startswith("exactly one label, the top-scoring one")
    parity = manifest["parity"]["int8"]
    assert parity["decision_flip_rate"] <= 0.2
    with __import__("tarfile").open(built.dist("onnx") / "bundle.tar.gz") as tar:
        card = tar.extractfile("model_card.md").read().decode()
    assert "exactly one label, the top-scoring one" in card
