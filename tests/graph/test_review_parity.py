"""The review comment reads the parity figures where package writes them: the manifest's `parity`
holds the gate's figures flat (stages.package._checks), other checks beside them under their
stage name. The comment once looked one level deeper (`parity.parity.…`) and so never showed a
parity delta nor the int8 flip rate."""
from __future__ import annotations

from typing import Any

from modelkiln.graph.headline import flip_rate
from modelkiln.graph.review import Side, deltas
from modelkiln.stages.package import _checks


def _manifest(flips: float, diff: float) -> dict[str, Any]:
    reports: dict[str, dict[str, Any]] = {"parity": {"int8": {"decision_flip_rate": flips, "top_label_agreement": 1.0},
                          "fp32": {"max_abs_logit_diff": diff}},
               "smoke": {"ok": True}}
    return {"files": [], "archive": {}, "parity": _checks(reports)}


def test_deltas_show_the_gate_figures_as_package_records_them() -> None:
    rows = "\n".join(deltas(Side("base", _manifest(0.0, 1e-6)), Side("now", _manifest(0.02, 1e-6))))
    assert "int8.decision_flip_rate" in rows and "0.02" in rows
    assert "fp32.max_abs_logit_diff" not in rows  # unchanged figures are not rows


def test_headline_flip_rate_reads_the_flat_figures() -> None:
    assert flip_rate(Side("now", _manifest(0.125, 0.0))) == 0.125
