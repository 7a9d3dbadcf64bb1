"""parity: the ONNX models must agree with PyTorch on the calibration texts, or the bundle fails.

Two gates, both on the same tokenized calibration rows (`parity.samples` caps how many):

- fp32: the largest absolute difference between ONNX fp32 and PyTorch *logits* must be at most
  `parity.atol`. Export is exact up to float rounding, so anything larger is an export bug.
- int8: quantization moves scores a little; what matters is whether a shipped decision changes.
  int8 runs one text at a time, as a serving call does (dynamic quantization scales activations
  per input tensor, so batching would make a row's result depend on its neighbours).
  Each (text, label) decision is `score >= threshold` with the thresholds the bundle ships; the
  fraction of all (text, label) decisions that differ from PyTorch's must be at most
  `parity.max_decision_flip_rate`. Per-label rates and top-label agreement are reported beside
  it, and a failure names the worst labels. Per-label rates are not gated one by one: cuts are
  fitted on these same rows and sit halfway between two of their scores, so with a few hundred
  rows one or two flips (0.5-1% of a label) are noise, not a broken label.

The report goes to `parity.json` and `parity.md` and into the stamp, from where the package stage
copies it into the manifest. A failed gate raises BuildError naming the worst labels and
what to try: how many decisions sit within the int8 error of their threshold, and only the
quantize settings the spec does not already have.
"""
from __future__ import annotations

import json
from typing import Any

from ..artifacts import names
from ..errors import BuildError
from ..model.bundle import Bundle, Quantize
from ..paths import Layout
from .base import Report, RunContext, StagePlan, params, stage_plan

NAME = "parity"
DOC = "parity gates: fp32 ONNX vs PyTorch logits, int8 decision flips"
READS: tuple[str, ...] = ("weights", "tokenizer", "labels", "thresholds", "onnx", "int8")
WRITES: tuple[str, ...] | None = ("parity.json", "parity.md")
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
TOOLS: tuple[str, ...] = ("onnxruntime", "torch", "transformers", "numpy")
PLATFORM: str | None = "cpu-int8"
CODE_VERSION = "2"  # 2: single-label decisions are the top label only (decisions.py)
WORST = 3  # labels named in a failure message


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    if bundle.onnx is None:
        return []
    p, n = bundle.onnx.parity, bundle.name
    cal = bundle.thresholds.calibration
    return [stage_plan(
        bundle, layout, "parity",
        doc=f"parity gates for {n}: fp32 logits within {p.atol:g}, int8 decision flips at most "
            f"{p.max_decision_flip_rate:g}",
        inputs=(cal,) if cal else (),
        upstream=("weights", "tokenizer", "labels", "thresholds", "onnx", "int8"),
        params=params(CODE_VERSION, atol=p.atol, max_decision_flip_rate=p.max_decision_flip_rate,
                      samples=p.samples, max_length=bundle.thresholds.max_length,
                      task=bundle.source.task),
        backend="onnx")]


def _r(x: float) -> float:
    return float(f"{float(x):.6g}")


def compare(ref: Any, fp32: Any, int8: Any, labels: tuple[str, ...], cuts: dict[str, float],
            task: str) -> Report:
    """The parity figures of fp32 and int8 logits against the PyTorch reference (pure numpy)."""
    import numpy as np

    from .infer import decide, scores

    diff = np.abs(fp32 - ref)
    p_ref, p_int8 = scores(ref, task), scores(int8, task)
    d_ref = decide(p_ref, labels, cuts, task=task)
    d_int8 = decide(p_int8, labels, cuts, task=task)
    flips = d_ref != d_int8
    rows = len(ref)
    error = np.abs(p_int8 - p_ref).max(axis=0)  # per label: how far int8 moved a score at most
    cut = np.asarray([cuts[lab] for lab in labels], dtype=p_ref.dtype)
    # A decision can flip only where PyTorch's score sits within int8's error of the threshold.
    near = (np.abs(p_ref - cut) <= error) & (error > 0)
    per_label = {lab: {"flips": int(flips[:, i].sum()), "flip_rate": _r(flips[:, i].mean()),
                       "fp32_max_abs_diff": _r(diff[:, i].max()),
                       "int8_max_abs_score_diff": _r(error[i]),
                       "near_threshold": int(near[:, i].sum())}
                 for i, lab in enumerate(labels)}
    return {
        "rows": rows, "labels": len(labels),
        "fp32": {"max_abs_logit_diff": _r(diff.max()),
                 "max_abs_score_diff": _r(np.abs(scores(fp32, task) - p_ref).max())},
        "int8": {"decision_flip_rate": _r(flips.mean()), "decision_flips": int(flips.sum()),
                 "decisions": int(flips.size),
                 "decisions_near_threshold": int(near.sum()),
                 "max_abs_score_diff": _r(error.max()) if error.size else 0.0,
                 "rows_with_a_flip": int(flips.any(axis=1).sum()),
                 "row_flip_rate": _r(flips.any(axis=1).mean()),
                 "top_label_agreement": _r((ref.argmax(1) == int8.argmax(1)).mean()),
                 "max_abs_logit_diff": _r(np.abs(int8 - ref).max())},
        "per_label": per_label,
    }


def int8_hint(report: Report, quantize: Quantize | None) -> str:
    """What to try about int8 flips, from the figures and the spec's own quantize settings: how
    many decisions the int8 error can reach, then only the settings the spec does not have yet."""
    int8 = report["int8"]
    near, total = int8.get("decisions_near_threshold"), int8["decisions"]
    lead = ""
    if near is not None:
        lead = (f"{near} of {total} decisions sit within the int8 error (up to "
                f"{int8.get('max_abs_score_diff', 0):.3g} in score) of their threshold, so at most "
                f"{near} can flip; ")
    if quantize is not None and quantize.mode == "auto":  # the int8 stage scored it the same way
        return (f"{lead}quantize: auto kept this model on the same rows and measure, so the "
                "inputs changed under it: rebuild int8, or raise "
                "backends.onnx.parity.max_decision_flip_rate")
    tries = ["quantize: auto (a fixed list of settings, the smallest that passes is kept)"] \
        if quantize is not None else []
    if quantize is None or not quantize.per_channel:
        tries.append("quantize.per_channel: true")
    if quantize is not None and quantize.reduce_range:
        tries.append("quantize.reduce_range: false")
    if quantize is None or quantize.mode == "dynamic":
        tries.append("quantize.mode: static")
    if quantize is None or quantize.op_types is None or len(quantize.op_types) > 1:
        tries.append("quantize.op_types: [MatMul]")
    return (f"{lead}try {' or '.join(tries)}, or " if tries else f"{lead}") + \
        "raise backends.onnx.parity.max_decision_flip_rate"


def gate(report: Report, atol: float, max_rate: float,
         quantize: Quantize | None = None) -> dict[str, str]:
    """gate name ('fp32', 'int8') -> readable reason it fails; empty when both pass."""
    failures = {}
    per = report["per_label"]
    fp32 = report["fp32"]["max_abs_logit_diff"]
    if fp32 > atol:
        worst = sorted(per, key=lambda lab: -per[lab]["fp32_max_abs_diff"])[:WORST]
        named = ", ".join(f"{lab} {per[lab]['fp32_max_abs_diff']:.3g}" for lab in worst)
        failures["fp32"] = (f"fp32 ONNX logits differ from PyTorch by up to {fp32:.3g} > atol "
                            f"{atol:g} (worst labels: {named}); the export is not faithful: try "
                            "another opset, or raise backends.onnx.parity.atol if this is "
                            "rounding")
    rate = report["int8"]["decision_flip_rate"]
    if rate > max_rate:
        worst = sorted(per, key=lambda lab: (-per[lab]["flip_rate"], lab))[:WORST]
        named = ", ".join(f"{lab} {per[lab]['flip_rate']:.2%} ({per[lab]['flips']}/"
                          f"{report['rows']})" for lab in worst)
        failures["int8"] = (f"int8 flips {report['int8']['decision_flips']} of "
                            f"{report['int8']['decisions']} decisions ({rate:.2%}) at the "
                            f"shipped thresholds, over the limit of {max_rate:.2%}; worst labels: "
                            f"{named}; {int8_hint(report, quantize)}")
    return failures


def markdown(report: Report, atol: float, max_rate: float) -> str:
    """A short Markdown summary: the two gates, then one row per label."""
    fp32, int8 = report["fp32"], report["int8"]
    failed = gate(report, atol, max_rate)
    ok = {True: "pass", False: "FAIL"}
    lines = [f"# Parity ({report['rows']} calibration rows, {report['labels']} labels)", "",
             "| gate | figure | limit | result |", "|---|---|---|---|",
             f"| fp32 ONNX vs PyTorch, max abs logit diff | {fp32['max_abs_logit_diff']:.3g} | "
             f"{atol:g} | {ok['fp32' not in failed]} |",
             f"| int8 vs PyTorch, decision flip rate | {int8['decision_flip_rate']:.2%} | "
             f"{max_rate:.2%} | {ok['int8' not in failed]} |",
             f"| int8 vs PyTorch, top-label agreement | {int8['top_label_agreement']:.2%} | "
             "- | info |", "",
             "| label | int8 flips | flip rate | fp32 max abs logit diff |", "|---|---|---|---|"]
    for lab, m in report["per_label"].items():
        lines.append(f"| {lab} | {m['flips']} | {m['flip_rate']:.2%} | "
                     f"{m['fp32_max_abs_diff']:.3g} |")
    return "\n".join(lines) + "\n"


def run(ctx: RunContext) -> Report:
    from .infer import encode, ort_logits, ort_logits_per_text, read_calibration, torch_logits
    from .int8 import OUTPUT
    from .onnx import MODEL

    b, p = ctx.bundle, ctx.onnx.parity
    labels = tuple(json.loads((ctx.up("labels") / names.LABEL_ORDER).read_bytes()))
    cuts = json.loads((ctx.up("thresholds") / names.THRESHOLDS).read_bytes())
    texts, _ = read_calibration(b.thresholds.calibration, labels, limit=p.samples)
    batch = encode(ctx.up("tokenizer") / names.TOKENIZER_DIR, texts, b.thresholds.max_length)
    ctx.log(f"parity:{b.name}: scoring {len(texts)} rows with PyTorch, ONNX fp32 and int8")
    ref = torch_logits(ctx.up("weights"), batch)
    fp32 = ort_logits(ctx.up("onnx") / MODEL, batch)
    int8 = ort_logits_per_text(ctx.up("int8") / OUTPUT, batch)
    report = compare(ref, fp32, int8, labels, cuts, b.source.task)
    report["limits"] = {"atol": p.atol, "max_decision_flip_rate": p.max_decision_flip_rate}
    auto = ctx.up_stamp("int8")["report"].get("auto")
    if auto:  # quantize: auto: the kept settings and every candidate's figures ship with the gate
        report["quantize"] = auto
    failures = gate(report, p.atol, p.max_decision_flip_rate, ctx.onnx.quantize)
    report["gates"] = {g: "fail" if g in failures else "pass" for g in ("fp32", "int8")}
    report["passed"] = not failures
    (ctx.out / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
    (ctx.out / "parity.md").write_text(markdown(report, p.atol, p.max_decision_flip_rate))
    if failures:
        raise BuildError(f"parity gate failed for {b.name}: " + " | ".join(failures.values()))
    ctx.log(f"parity:{b.name}: fp32 max |diff| {report['fp32']['max_abs_logit_diff']:.3g}, "
            f"int8 flip rate {report['int8']['decision_flip_rate']:.2%}")
    return report
