"""thresholds: per-label decision cuts -> `thresholds.json` and `threshold_metrics.json`.

`fixed` takes values from the spec (the default for labels it does not name). `f1-optimal` scores
the calibration set with the converted model and, per label, picks the cut that maximises F1 of
the decisions the bundle will make (artifacts/decisions.py), placed halfway between two
neighbouring scores so no calibration row sits on the boundary:

- multi-label: a label is on when its score reaches its cut; the cut is chosen over that label's
  scores. A cut that would mark every calibration row positive while some are negative is the
  "always positive" answer F1 can prefer on a weak label: it is refused, the label keeps the
  default, and the build log, the metrics and the model card say why.
- single-label: only the top label can be on, so a cut is an abstain floor: chosen over the rows
  where the label is on top, it drops the least confident of them while that raises the label's
  F1 (a floor under every such row abstains on none).

Labels with fewer positives than `min_support` keep the default: the data cannot decide them.
"""
from __future__ import annotations

import json
from typing import Any

from ..artifacts import names
from ..model.bundle import Bundle
from ..paths import Layout
from .base import Report, RunContext, StagePlan, params, section, stage_plan

NAME = "thresholds"
DOC = "choose per-label decision thresholds (fixed or calibrated)"
READS: tuple[str, ...] = ("weights", "tokenizer", "labels")
WRITES: tuple[str, ...] | None = (names.THRESHOLDS, names.THRESHOLD_METRICS)
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
TOOLS: tuple[str, ...] = ("numpy", "torch", "transformers", "tokenizers")
PLATFORM: str | None = None
CODE_VERSION = "2"  # 2: single-label floors; no silent always-positive cut


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    t = bundle.thresholds
    calibrated = t.strategy == "f1-optimal"
    return [stage_plan(
        bundle, layout, "thresholds",
        doc=f"choose {bundle.name}'s per-label decision thresholds ({t.strategy})",
        inputs=(t.calibration,) if calibrated and t.calibration else (),
        upstream=("weights", "tokenizer", "labels") if calibrated else ("labels",),
        params=params(CODE_VERSION, thresholds=section(bundle, "thresholds"),
                      task=bundle.source.task))]


def best_cut(score: Any, truth: Any, positives: int | None = None
             ) -> tuple[float, dict[str, float]]:
    """The F1-maximising threshold for one label and its metrics (ties: the higher cut).
    `positives`: the label's positives when `score` covers only some of them (single-label:
    the rows where the label is on top; a positive elsewhere is a miss at any floor)."""
    import numpy as np

    order = np.argsort(-score, kind="stable")
    s, y = score[order], truth[order].astype(np.int64)
    tp = np.cumsum(y)
    fp = np.cumsum(1 - y)
    positives = int(y.sum()) if positives is None else positives
    # Predicting the top k rows positive is possible only where score[k-1] > score[k].
    distinct = np.append(s[:-1] > s[1:], True)
    f1 = np.where(distinct, 2 * tp / (tp + fp + positives), -1.0)
    k = int(np.argmax(f1))
    cut = float((s[k] + s[k + 1]) / 2) if k + 1 < len(s) else float(s[k]) / 2
    precision = float(tp[k] / (tp[k] + fp[k]))
    recall = float(tp[k] / positives) if positives else 0.0
    return round(cut, 6), {"f1": round(float(f1[k]), 6), "precision": round(precision, 6),
                           "recall": round(recall, 6), "support": positives,
                           "all_positive": k + 1 == len(s) and bool(fp[k])}


def choose(probs: Any, truth: Any, i: int, task: str) -> tuple[float, dict[str, Any]]:
    """The calibrated cut of label `i` under the task's decision rule."""
    from ..artifacts.decisions import MULTI_LABEL

    if task == MULTI_LABEL:
        return best_cut(probs[:, i], truth[:, i])
    on_top = probs.argmax(axis=1) == i
    if not on_top.any():
        return 0.0, {"f1": 0.0, "precision": 0.0, "recall": 0.0,
                     "support": int(truth[:, i].sum()), "all_positive": False}
    cut, m = best_cut(probs[on_top, i], truth[on_top, i], int(truth[:, i].sum()))
    return cut, {**m, "all_positive": False}  # a floor under every top row abstains on none


def run(ctx: RunContext) -> Report:
    from .infer import encode, read_calibration, scores, torch_logits

    t = ctx.bundle.thresholds
    labels = tuple(json.loads((ctx.up("labels") / names.LABEL_ORDER).read_bytes()))
    fixed = dict(t.values)
    cuts, metrics = {}, {}
    if t.strategy == "f1-optimal":
        texts, truth = read_calibration(t.calibration, labels)
        batch = encode(ctx.up("tokenizer") / names.TOKENIZER_DIR, texts, t.max_length)
        probs = scores(torch_logits(ctx.up("weights"), batch), ctx.bundle.source.task)
        for i, label in enumerate(labels):
            support = int(truth[:, i].sum())
            if label in fixed:
                cuts[label], metrics[label] = fixed[label], {"source": "spec", "support": support}
            elif support < t.min_support or support == len(texts):
                cuts[label] = t.default
                metrics[label] = {"source": "default", "support": support,
                                  "why": "calibration data cannot decide this label"}
            else:
                cut, m = choose(probs, truth, i, ctx.bundle.source.task)
                if m.pop("all_positive"):
                    why = (f"f1-optimal would mark every calibration row positive (precision "
                           f"{m['precision']:.2f}, recall 1.0): kept the default")
                    ctx.log(f"thresholds:{ctx.bundle.name}: {label}: {why}")
                    cuts[label] = t.default
                    metrics[label] = {"source": "default", "support": support, "why": why,
                                      "refused_cut": cut}
                else:
                    cuts[label], metrics[label] = cut, {"source": "f1-optimal", **m}
        ctx.log(f"thresholds:{ctx.bundle.name}: calibrated on {len(texts)} rows")
    else:
        for label in labels:
            cuts[label] = fixed.get(label, t.default)
            metrics[label] = {"source": "spec" if label in fixed else "default"}
    (ctx.out / names.THRESHOLDS).write_text(json.dumps(cuts, indent=2) + "\n")
    (ctx.out / names.THRESHOLD_METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    decided = sum(1 for m in metrics.values() if m["source"] == "f1-optimal")
    return {"strategy": t.strategy, "calibrated_labels": decided, "labels": len(labels)}
