"""How a classifier's logits become scores and decisions: one rule for every place that decides.

The thresholds stage fits cuts on these scores, the parity gates count flips with them, and the
serving `predict` path (runtime/predict.py, inside the image and on a bootstrapped host) answers
with them, so a label is "on" in production exactly when it was on in the gate. numpy is imported
inside the functions: the runtime imports this module without it.
"""
from __future__ import annotations

from typing import Any

from ..errors import BuildError

MULTI_LABEL = "multi-label-classification"
SINGLE_LABEL = "single-label-classification"
SCORE_RULE = {MULTI_LABEL: "sigmoid", SINGLE_LABEL: "softmax"}
DECISION_RULE = {
    MULTI_LABEL: "every label whose score >= its threshold",
    SINGLE_LABEL: "exactly one label, the top-scoring one, unless its score is under its "
                  "threshold (an abstain floor: then none)",
}


def scores(logits: Any, task: str) -> Any:
    """Per-label scores: sigmoid for multi-label, softmax for single-label."""
    import numpy as np

    if task == MULTI_LABEL:
        return 1.0 / (1.0 + np.exp(-logits))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cut_vector(labels: tuple[str, ...] | list[str], cuts: dict[str, float], dtype: Any) -> Any:
    """The thresholds in label order, as one array (a caller deciding many rows keeps it)."""
    import numpy as np

    missing = [lab for lab in labels if lab not in cuts]
    if missing:
        raise BuildError(f"thresholds.json has no threshold for {missing}; rebuild thresholds")
    return np.asarray([cuts[lab] for lab in labels], dtype=dtype)


def decide(probs: Any, labels: tuple[str, ...] | list[str], cuts: dict[str, float], *,
           task: str, vector: Any = None) -> Any:
    """Boolean decisions (rows x labels), by DECISION_RULE[task]: multi-label, every label whose
    score reaches its threshold; single-label, only the top label, and only when its score
    reaches its threshold (the threshold is an abstain floor, never a second label).
    `vector`: cut_vector(labels, cuts, probs.dtype), when the caller already has it."""
    import numpy as np

    passed = probs >= (cut_vector(labels, cuts, probs.dtype) if vector is None else vector)
    if task == MULTI_LABEL:
        return passed
    top = np.zeros(probs.shape, dtype=bool)
    top[np.arange(len(probs)), probs.argmax(axis=1)] = True
    return top & passed
