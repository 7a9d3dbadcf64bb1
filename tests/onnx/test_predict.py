"""`python -m modelkiln.runtime predict`: the serving path answers exactly as the build's gates.

The expected answers are computed the way the int8 parity gate computes its decisions (the
build's tokenizer through transformers, the int8 model one text at a time, decisions.py's rule
with the shipped thresholds); predict runs in a subprocess over the unpacked bundle, as a serving
host runs it after `kiln bootstrap`.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import LABELS, Project
from modelkiln.artifacts import names
from modelkiln.artifacts.extract import safe_extract

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(onnx_built: Project, tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("predict") / "bundle"
    safe_extract(onnx_built.dist("onnx") / "bundle.tar.gz", where)
    return where


def _texts(project: Project) -> list[str]:
    rows = (project.root / "bundles/tiny/calibration.jsonl").read_text().splitlines()
    return [json.loads(r)["text"] for r in rows]


def _predict(where: Path, lines: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelkiln.runtime", "predict", *args],
                          input="\n".join(lines) + "\n", capture_output=True, text=True,
                          timeout=300, env={"REGISTRY_BUNDLE_DIR": str(where), "PATH": "/usr/bin"})


def test_answers_match_the_gates_decisions(bundle: Path, onnx_built: Project) -> None:
    from modelkiln.stages.infer import decide, encode, ort_logits_per_text, scores

    texts = _texts(onnx_built)
    batch = encode(bundle / names.TOKENIZER_DIR, texts, 128)
    probs = scores(ort_logits_per_text(bundle / names.ONNX_INT8, batch).astype("float64"),
                   "multi-label-classification")
    cuts = json.loads((bundle / names.THRESHOLDS).read_text())
    on = decide(probs, LABELS, cuts, task="multi-label-classification")
    done = _predict(bundle, [json.dumps({"text": t}) for t in texts])
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == len(texts)
    for i, answer in enumerate(answers):
        assert answer["labels"] == [lab for lab, hit in zip(LABELS, on[i], strict=True) if hit]
        assert max(abs(answer["scores"][lab] - probs[i, j]) for j, lab in enumerate(LABELS)) \
            < 1e-5
    assert len({tuple(a["labels"]) for a in answers}) > 1  # the rows are not decided alike


def test_the_manifest_records_the_signature(bundle: Path) -> None:
    sig = json.loads((bundle / names.MANIFEST).read_text())["signature"]
    assert sig["task"] == "multi-label-classification" and sig["input"] == "text"
    assert sig["labels"] == list(LABELS) and sig["score"] == "sigmoid"
    assert sig["max_length"] == 128 and "threshold" in sig["decision"]


@pytest.mark.parametrize("bad", ["not json", '{"txt": "x"}', "[1, 2]", '{"text": 3}'])
def test_a_malformed_line_is_one_error_line_in_its_place(bundle: Path, bad: str) -> None:
    done = _predict(bundle, ['{"text": "scope left"}', bad, '{"text": "biopsy"}'])
    assert done.returncode == 1
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [sorted(o) for o in out] == [["labels", "scores"], ["error"], ["labels", "scores"]]
    assert out[1]["error"].startswith("line 2: ")
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("kiln: predict: line 2: ")
    assert "Traceback" not in done.stderr


def test_usage_and_a_missing_bundle_are_one_line(tmp_path: Path) -> None:
    no_dir = subprocess.run([sys.executable, "-m", "modelkiln.runtime", "predict"], input="",
                            capture_output=True, text=True, env={"PATH": "/usr/bin"}, timeout=60)
    assert no_dir.returncode == 64 and "REGISTRY_BUNDLE_DIR" in no_dir.stderr
    missing = _predict(tmp_path, ['{"text": "x"}'])
    assert missing.returncode == 1 and missing.stderr.startswith("kiln: ")
    assert "Traceback" not in missing.stderr and missing.stderr.count("\n") == 1


def test_each_line_is_answered_before_the_next_arrives(bundle: Path) -> None:
    """A caller that sends one line and waits gets its answer (answers are flushed whenever no
    more input is waiting), so predict works as a long-lived pipe, not only over a whole file."""
    import select

    proc = subprocess.Popen([sys.executable, "-m", "modelkiln.runtime", "predict", str(bundle)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={"PATH": "/usr/bin"})
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for text in ("left scope", "biopsy taken"):
            proc.stdin.write(json.dumps({"text": text}) + "\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            assert ready, "no answer while the input stays open"
            assert "labels" in json.loads(proc.stdout.readline())
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
