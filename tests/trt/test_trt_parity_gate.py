"""The TensorRT parity gate as a pure function on arrays: element tolerances and decision flips
at the shipped thresholds, against the fp32 ONNX logits."""
from __future__ import annotations

import numpy as np

from modelkiln.stages.trtparity import compare, gate

LABELS = ("a", "b", "c")
CUTS = {"a": 0.5, "b": 0.5, "c": 0.5}
TASK = "multi-label-classification"


def _ref() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 3, (200, 3)).astype(np.float32)


def test_fp16_rounding_passes_both_gates() -> None:
    ref = _ref()
    engine = ref.astype(np.float16).astype(np.float32)
    report = compare(ref, engine, LABELS, CUTS, TASK, 0.01, 0.01)
    assert report["outside_tolerance"] == 0 and report["max_abs_logit_diff"] > 0
    assert gate(report, 0.01, 0.01, 0.01) == {}


def test_flips_at_the_threshold_fail_the_decision_gate_only() -> None:
    ref = _ref()
    ref[:10, 0] = 0.001  # just above the cut (sigmoid 0.50025)
    engine = ref.copy()
    engine[:10, 0] = -0.001  # just below: within tolerance, but the decision flips
    report = compare(ref, engine, LABELS, CUTS, TASK, 0.01, 0.01)
    assert report["decision_flips"] == 10 and report["per_label"]["a"]["flips"] == 10
    failed = gate(report, 0.01, 0.01, 0.01)
    assert set(failed) == {"decisions"}
    assert "10 of 600 decisions (1.67%)" in failed["decisions"] and "a 5.00%" in failed["decisions"]
    assert gate(report, 0.01, 0.01, 0.05) == {}  # a looser limit lets it through


def test_a_broken_engine_fails_the_element_gate() -> None:
    ref = _ref()
    engine = ref.copy()
    engine[3, 2] += 0.5
    report = compare(ref, engine, LABELS, CUTS, TASK, 0.01, 0.01)
    failed = gate(report, 0.01, 0.01, 1.0)
    assert set(failed) == {"elements"} and report["outside_tolerance"] == 1
    assert "worst labels: c 0.5" in failed["elements"]
