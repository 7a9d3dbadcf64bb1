"""One decision rule for every place that decides (artifacts/decisions.py), and the thresholds
chosen under it: single-label means the top label only, a calibrated cut never silently marks
every row positive."""
from __future__ import annotations

import numpy as np

from modelkiln.artifacts.decisions import MULTI_LABEL, SINGLE_LABEL, decide
from modelkiln.stages.thresholds import best_cut, choose

LABELS = ("a", "b", "c")
PROBS = np.array([[0.40, 0.35, 0.25],    # a on top; a and b over their cuts
                  [0.20, 0.30, 0.50],    # c on top but under its floor: abstain
                  [0.34, 0.33, 0.33]])
CUTS = {"a": 0.2, "b": 0.2, "c": 0.6}


def _names(rows: np.ndarray) -> list[list[str]]:
    return [[lab for lab, on in zip(LABELS, row, strict=True) if on] for row in rows]


def test_single_label_is_the_top_label_or_none() -> None:
    assert _names(decide(PROBS, LABELS, CUTS, task=SINGLE_LABEL)) == [["a"], [], ["a"]]


def test_multi_label_is_every_label_over_its_cut() -> None:
    assert _names(decide(PROBS, LABELS, CUTS, task=MULTI_LABEL)) == \
        [["a", "b"], ["a", "b"], ["a", "b"]]  # several labels: what single-label must not do


def test_an_always_positive_cut_is_flagged() -> None:
    """The negative scores highest: F1 prefers marking all four rows positive (precision 0.75,
    recall 1.0); the cut is flagged so the stage keeps the default and says why."""
    cut, m = best_cut(np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 1, 1, 1]))
    assert m["all_positive"] and m["recall"] == 1.0 and m["precision"] == 0.75 and cut < 0.6
    cut, m = best_cut(np.array([0.9, 0.8, 0.2, 0.1]), np.array([1, 1, 0, 0]))
    assert not m["all_positive"] and 0.2 < cut < 0.8 and m["f1"] == 1.0


def test_a_single_label_floor_is_chosen_among_the_rows_where_the_label_is_on_top() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [0.2, 0.8]])
    truth = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    cut, m = choose(probs, truth, 0, SINGLE_LABEL)
    assert 0.55 < cut < 0.6 and m["f1"] == 1.0  # abstains on the wrong, least confident row
    on = decide(probs, ("x", "y"), {"x": cut, "y": 0.0}, task=SINGLE_LABEL)
    assert on.sum(axis=1).max() == 1 and on.tolist() == [[True, False], [True, False],
                                                           [False, False], [False, True]]
