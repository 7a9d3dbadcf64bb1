"""The parity gates: the figures (pure numpy, fast) and real builds that a gate must stop (slow)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.typing import ArrayLike, NDArray

import onnx_reference
from helpers import Project
from modelkiln.model.bundle import Quantize
from modelkiln.stages.parity import compare, gate, markdown

LABELS = ("a", "b", "c")
CUTS = {"a": 0.5, "b": 0.5, "c": 0.5}


def _logit(probs: ArrayLike) -> NDArray[np.float32]:
    p = np.asarray(probs, dtype=np.float64)
    return np.log(p / (1 - p)).astype(np.float32)


def test_flips_are_counted_per_label_at_the_shipped_thresholds() -> None:
    ref = _logit([[0.9, 0.51, 0.2], [0.1, 0.49, 0.8], [0.6, 0.7, 0.3], [0.4, 0.2, 0.9]])
    int8 = _logit([[0.9, 0.49, 0.2], [0.1, 0.51, 0.8], [0.6, 0.7, 0.3], [0.4, 0.2, 0.35]])
    report = compare(ref, ref + 1e-6, int8, LABELS, CUTS, "multi-label-classification")
    assert report["int8"]["decision_flips"] == 3 and report["int8"]["decisions"] == 12
    assert report["int8"]["decision_flip_rate"] == pytest.approx(0.25)
    assert report["int8"]["rows_with_a_flip"] == 3
    assert [report["per_label"][lab]["flips"] for lab in LABELS] == [0, 2, 1]
    assert report["fp32"]["max_abs_logit_diff"] == pytest.approx(1e-6, rel=0.2)
    assert report["int8"]["top_label_agreement"] == pytest.approx(0.75)  # row 4: c -> a


def test_thresholds_are_per_label() -> None:
    ref = _logit([[0.55, 0.55, 0.55]])
    int8 = _logit([[0.65, 0.65, 0.65]])
    cuts = {"a": 0.5, "b": 0.6, "c": 0.7}  # only b's cut lies between the two scores
    report = compare(ref, ref, int8, LABELS, cuts, "multi-label-classification")
    assert [report["per_label"][lab]["flips"] for lab in LABELS] == [0, 1, 0]


def test_gate_messages_name_the_worst_labels_and_figures() -> None:
    ref = _logit([[0.51, 0.51, 0.9]] * 10)
    int8 = ref.copy()
    int8[:3, 0] = _logit([0.49])[0]  # a flips on 3 of 10 rows
    int8[:1, 1] = _logit([0.49])[0]  # b flips on 1 of 10 rows
    fp32 = ref.copy()
    fp32[0, 2] += 0.01
    report = compare(ref, fp32, int8, LABELS, CUTS, "multi-label-classification")
    failures = gate(report, atol=1e-3, max_rate=0.05)
    assert set(failures) == {"fp32", "int8"}
    assert "0.01 > atol 0.001" in failures["fp32"] and "worst labels: c 0.01" in failures["fp32"]
    assert "int8 flips 4 of 30 decisions (13.33%) at the shipped thresholds, over the limit of " \
        "5.00%" in failures["int8"]
    assert "worst labels: a 30.00% (3/10), b 10.00% (1/10)" in failures["int8"]
    assert gate(report, atol=0.02, max_rate=0.3) == {}
    md = markdown(report, 1e-3, 0.05)
    assert "| fp32 ONNX vs PyTorch, max abs logit diff | 0.01 | 0.001 | FAIL |" in md
    assert "| a | 3 | 30.00% |" in md


def test_the_flip_gate_is_on_the_overall_rate_and_the_limit_is_inclusive() -> None:
    labels = tuple(f"l{i}" for i in range(20))
    cuts = dict.fromkeys(labels, 0.5)
    ref = _logit(np.full((10, 20), 0.6))
    int8 = ref.copy()
    int8[:2, 7] = _logit([0.4])[0]  # 2 of 200 decisions: 1% overall, l7 on 20% of its rows
    report = compare(ref, ref, int8, labels, cuts, "multi-label-classification")
    assert report["int8"]["decision_flip_rate"] == pytest.approx(0.01)
    assert report["per_label"]["l7"]["flip_rate"] == pytest.approx(0.2)
    assert gate(report, atol=1e-4, max_rate=0.01) == {}
    failures = gate(report, atol=1e-4, max_rate=0.009)
    assert list(failures) == ["int8"] and "worst labels: l7 20.00% (2/10), l0 0.00%" in \
        failures["int8"]


@pytest.mark.slow
def test_fp32_gate_fails_the_build(project_copy: Project) -> None:
    project_copy.edit("atol: 1.0e-4", "atol: 1.0e-12")
    run = project_copy.doit("build:tiny")
    assert run.code != 0
    assert "parity:tiny" in run.executed and "package:tiny-onnx" not in run.executed
    assert "parity gate failed for tiny: fp32 ONNX logits differ from PyTorch by up to" \
        in run.output
    assert "> atol 1e-12 (worst labels: " in run.output
    kept = project_copy.root / "build/tiny/parity.failed"
    assert f"kept in {kept}" in run.output
    assert json.loads((kept / "parity.json").read_text())["gates"]["fp32"] == "fail"
    # no stamp: the gate reruns (and fails again) next time rather than passing silently
    assert not (project_copy.root / "build/tiny/.stamps/parity.json").exists()
    assert project_copy.doit("build:tiny").code != 0


@pytest.mark.slow
def test_decision_flip_gate_fails_the_build(onnx_built: Project, project_copy: Project) -> None:
    """A shipped threshold placed between a row's PyTorch and int8 scores must flip a decision."""
    labels, ref, q, _ = onnx_reference.scores(onnx_built.root)
    row, col = np.unravel_index(int(np.argmax(np.abs(q - ref))), q.shape)
    lo, hi = sorted((float(ref[row, col]), float(q[row, col])))
    assert hi - lo > 1e-6, "premise: int8 moves some score"
    cut = (lo + hi) / 2
    project_copy.edit("  default: 0.5\n", f"  default: 0.5\n  values: {{{labels[col]}: {cut!r}}}\n")
    project_copy.edit("max_decision_flip_rate: 0.1", "max_decision_flip_rate: 0")
    run = project_copy.doit("build:tiny")
    assert run.code != 0
    assert "int8 flips " in run.output and "over the limit of 0.00%; worst labels: " in run.output
    assert f"{labels[col]} " in run.output.split("worst labels: ", 1)[1], run.output
    # thresholds and the gate reran; export and quantization did not
    assert {"thresholds:tiny", "parity:tiny"} <= run.executed, run.output
    assert not run.executed & {"onnx:tiny", "int8:tiny"}, run.output


def _quantize(**over: object) -> Quantize:
    values: dict[str, object] = {"mode": "dynamic", "weight_type": "int8", "per_channel": True,
                                 "reduce_range": False, "op_types": None, "calibration": None}
    values.update(over)
    return Quantize(**values)  # type: ignore[arg-type]


def test_flip_hint_is_computed_from_the_spec_and_the_data() -> None:
    """The hint once suggested per_channel: true to a spec that had it; now it names only what the
    spec lacks, and how many decisions the int8 error can reach."""
    ref = _logit([[0.51, 0.9, 0.2], [0.505, 0.8, 0.45], [0.7, 0.9, 0.1], [0.3, 0.6, 0.1]])
    int8 = ref.copy()
    int8[0, 0] = _logit([0.49])[0]  # a moves by 0.02 at most: rows 0 and 1 sit within 0.02 of 0.5
    report = compare(ref, ref, int8, LABELS, CUTS, "multi-label-classification")
    assert report["int8"]["decisions_near_threshold"] == 2
    assert report["per_label"]["a"]["near_threshold"] == 2
    assert report["per_label"]["b"]["near_threshold"] == 0  # int8 did not move b at all
    has_it = gate(report, atol=1.0, max_rate=0.0, quantize=_quantize(per_channel=True))["int8"]
    assert "2 of 12 decisions sit within the int8 error (up to 0.02 in score) of their threshold" in has_it
    assert "per_channel" not in has_it
    assert "try quantize: auto (a fixed list of settings, the smallest that passes is kept) or " \
           "quantize.mode: static or quantize.op_types: [MatMul], or raise " \
           "backends.onnx.parity.max_decision_flip_rate" in has_it
    lacks_it = gate(report, atol=1.0, max_rate=0.0, quantize=_quantize(per_channel=False))["int8"]
    assert "kept) or quantize.per_channel: true or quantize.mode: static" in lacks_it
    tried_all = gate(report, atol=1.0, max_rate=0.0, quantize=_quantize(
        mode="static", op_types=("MatMul",)))["int8"]
    assert tried_all.endswith("of their threshold, so at most 2 can flip; try quantize: auto (a "
                              "fixed list of settings, the smallest that passes is kept), or "
                              "raise backends.onnx.parity.max_decision_flip_rate")
    after_auto = gate(report, atol=1.0, max_rate=0.0, quantize=_quantize(mode="auto"))["int8"]
    assert "try" not in after_auto and "rebuild int8" in after_auto
