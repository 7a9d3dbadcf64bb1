"""trtparity: each TensorRT engine must agree with the fp32 ONNX model, or the bundle fails.

Two gates per engine (one per GPU architecture), on the logits the trt stage recorded for the
parity rows, against the fp32 ONNX model's logits on the same rows:

- elements: every logit within `atol + rtol * |onnx|` of the ONNX one (fp16 and int8 engines
  round; anything further off is a broken engine, not rounding);
- decisions: at the thresholds the bundle ships, the fraction of (text, label) decisions that
  differ from the ONNX model's must be at most `max_decision_flip_rate`, like the int8 gate.

This stage reads thresholds and the recorded logits only, never the engine: editing thresholds
reruns it (cheaply, on any machine) and never rebuilds an engine. `compare` and `gate` are pure
functions on arrays. The report goes to trt_parity.json/.md and, through the stamp, into the
tensorrt bundle's manifest and model card.

An encoder task kind is gated in its own measure instead (stages/trt_kinds.compare): cosine for an
embedding, token tag agreement for a tagger, beside the elements gate; an image classifier keeps
the two gates above, its decisions taken as a single-label classifier's.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..artifacts import names
from ..errors import BuildError
from ..model.bundle import Bundle
from ..paths import Layout
from .base import Report, RunContext, StagePlan, params, stage_plan

NAME = "trtparity"
DOC = "parity gates: TensorRT engine logits and decision flips vs the fp32 ONNX model"
READS: tuple[str, ...] = ("engines", "labels", "thresholds")
WRITES: tuple[str, ...] | None = ("trt_parity.json", "trt_parity.md")
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
PLATFORM: str | None = None
CODE_VERSION = "2"  # 2: single-label decisions are the top label only (decisions.py)
TOOLS: tuple[str, ...] = ("numpy",)
WORST = 3


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    t = bundle.tensorrt
    if t is None:
        return []
    p = t.parity
    measure = _measure(bundle)
    if measure is not None:  # an encoder kind without thresholds: its own measure (trt_kinds)
        text, limit = measure
        return [stage_plan(
            bundle, layout, "trtparity",
            doc=f"parity gates for {bundle.name}'s TensorRT engines: outputs within {p.atol:g} + "
                f"{p.rtol:g}·|x|, {text} at least {limit:g} vs the fp32 ONNX model",
            upstream=("engines",),
            params=params(CODE_VERSION, atol=p.atol, rtol=p.rtol, task=bundle.source.task,
                          measure=text, limit=limit),
            backend="tensorrt")]
    return [stage_plan(
        bundle, layout, "trtparity",
        doc=f"parity gates for {bundle.name}'s TensorRT engines: logits within {p.atol:g} + "
            f"{p.rtol:g}·|x|, decision flips at most {p.max_decision_flip_rate:g}",
        upstream=("engines", "labels", "thresholds"),  # every engine the bundle will hold
        params=params(CODE_VERSION, atol=p.atol, rtol=p.rtol,
                      max_decision_flip_rate=p.max_decision_flip_rate, task=bundle.source.task),
        backend="tensorrt")]


def _measure(bundle: Bundle) -> tuple[str, float] | None:
    """An encoder kind's gate measure and limit (None: logits and decisions at the thresholds,
    the classifiers' and the image classifier's gate)."""
    if bundle.embedding is not None:
        return "cosine", bundle.embedding.parity.min_cosine
    if bundle.entities is not None:
        return "token tag agreement", bundle.entities.min_agreement
    return None


def _task(bundle: Bundle) -> str:
    """The decision rule's task name: an image classifier decides as a single-label one."""
    from ..artifacts.decisions import SINGLE_LABEL
    from ..model.kinds import IMAGE_CLASSIFICATION

    return SINGLE_LABEL if bundle.source.task == IMAGE_CLASSIFICATION else bundle.source.task


def _r(x: Any) -> float:
    return float(f"{float(x):.6g}")


def compare(reference: Any, engine: Any, labels: tuple[str, ...], cuts: dict[str, float],
            task: str, atol: float, rtol: float) -> Report:
    """Parity figures of one engine's logits against the ONNX fp32 logits (pure numpy)."""
    import numpy as np

    from .infer import decide, scores

    if engine.shape != reference.shape:
        raise BuildError(f"the engine gave logits of shape {list(engine.shape)}, the ONNX model "
                         f"{list(reference.shape)}; rebuild trt")
    diff = np.abs(engine - reference)
    outside = diff > atol + rtol * np.abs(reference)
    flips = decide(scores(reference, task), labels, cuts, task=task) != \
        decide(scores(engine, task), labels, cuts, task=task)
    per_label = {lab: {"flips": int(flips[:, i].sum()), "flip_rate": _r(flips[:, i].mean()),
                       "max_abs_logit_diff": _r(diff[:, i].max()),
                       "outside_tolerance": int(outside[:, i].sum())}
                 for i, lab in enumerate(labels)}
    return {"rows": len(reference), "labels": len(labels),
            "max_abs_logit_diff": _r(diff.max()), "outside_tolerance": int(outside.sum()),
            "elements": int(outside.size), "decision_flips": int(flips.sum()),
            "decisions": int(flips.size), "decision_flip_rate": _r(flips.mean()),
            "top_label_agreement": _r((reference.argmax(1) == engine.argmax(1)).mean()),
            "per_label": per_label}


def gate(report: Report, atol: float, rtol: float, max_rate: float) -> dict[str, str]:
    """gate name ('elements', 'decisions') -> why it fails; empty when both pass."""
    failures = {}
    per = report["per_label"]
    if report["outside_tolerance"]:
        worst = sorted(per, key=lambda lab: (-per[lab]["max_abs_logit_diff"], lab))[:WORST]
        named = ", ".join(f"{lab} {per[lab]['max_abs_logit_diff']:.3g}" for lab in worst)
        failures["elements"] = (f"{report['outside_tolerance']} of {report['elements']} logits "
                                f"differ from ONNX fp32 by more than {atol:g} + {rtol:g}·|x| "
                                f"(max {report['max_abs_logit_diff']:.3g}; worst labels: "
                                f"{named}); try precision: fp32, or raise "
                                "backends.tensorrt.parity.atol/rtol if this is rounding")
    rate = report["decision_flip_rate"]
    if rate > max_rate:
        worst = sorted(per, key=lambda lab: (-per[lab]["flip_rate"], lab))[:WORST]
        named = ", ".join(f"{lab} {per[lab]['flip_rate']:.2%}" for lab in worst)
        failures["decisions"] = (f"{report['decision_flips']} of {report['decisions']} "
                                 f"decisions ({rate:.2%}) flip at the shipped thresholds, over "
                                 f"the limit of {max_rate:.2%}; worst labels: {named}; try "
                                 "precision: fp32, or raise "
                                 "backends.tensorrt.parity.max_decision_flip_rate")
    return failures


def markdown(reports: dict[str, Report]) -> str:
    lines = ["# TensorRT parity (against the fp32 ONNX model)", "",
             "| engine | rows | max abs logit diff | outside tolerance | decision flip rate | "
             "limit | result |", "|---|---|---|---|---|---|---|"]
    for sm, r in reports.items():
        lim = r["limits"]
        lines.append(f"| {sm} | {r['rows']} | {r['max_abs_logit_diff']:.3g} | "
                     f"{r['outside_tolerance']}/{r['elements']} | "
                     f"{r['decision_flip_rate']:.2%} | {lim['max_decision_flip_rate']:.2%} | "
                     f"{'pass' if r['passed'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def run(ctx: RunContext) -> Report:
    import numpy as np

    from .trt import PARITY_DIR

    t = ctx.bundle.tensorrt
    if t is None:
        raise BuildError(f"{ctx.plan.task}: backends.tensorrt is not enabled; run `kiln plan` again")
    p = t.parity
    if _measure(ctx.bundle) is not None:
        return _run_kind(ctx, p.atol, p.rtol)
    labels = tuple(json.loads((ctx.up("labels") / names.LABEL_ORDER).read_bytes()))
    cuts = json.loads((ctx.up("thresholds") / names.THRESHOLDS).read_bytes())
    reports: dict[str, Report] = {}
    failures: list[str] = []
    for d in sorted((ctx.up("engines") / PARITY_DIR).iterdir()):
        report = compare(np.load(d / "onnx.npy"), np.load(d / "engine.npy"), labels, cuts,
                         _task(ctx.bundle), p.atol, p.rtol)
        failed = gate(report, p.atol, p.rtol, p.max_decision_flip_rate)
        report["limits"] = {"atol": p.atol, "rtol": p.rtol,
                            "max_decision_flip_rate": p.max_decision_flip_rate}
        report["gates"] = {g: "fail" if g in failed else "pass" for g in ("elements", "decisions")}
        report["passed"] = not failed
        reports[d.name] = report
        failures += [f"{d.name}: {why}" for why in failed.values()]
    if not reports:
        raise BuildError("the trt stage recorded no parity logits; rebuild trt")
    return _finish(ctx, reports, markdown(reports), failures,
                   lambda r: f"max |diff| {r['max_abs_logit_diff']:.3g}, "
                             f"flip rate {r['decision_flip_rate']:.2%}")


def _finish(ctx: RunContext, reports: dict[str, Report], md: str, failures: list[str],
            summary: Callable[[Report], str]) -> Report:
    """Write both gates' report files, fail with every engine's reason, else log each engine."""
    (ctx.out / "trt_parity.json").write_text(json.dumps(reports, indent=2) + "\n")
    (ctx.out / "trt_parity.md").write_text(md)
    if failures:
        raise BuildError(f"TensorRT parity gate failed for {ctx.bundle.name}: "
                         + " | ".join(failures))
    for sm, r in reports.items():
        ctx.log(f"trtparity:{ctx.bundle.name}: {sm} {summary(r)}")
    return {"engines": reports}


def _run_kind(ctx: RunContext, atol: float, rtol: float) -> Report:
    """An embedding's or tagger's gate: trt_kinds.compare per engine, the same files out."""
    import numpy as np

    from .trt import PARITY_DIR
    from .trt_kinds import MASK, compare

    reports: dict[str, Report] = {}
    failures: list[str] = []
    for d in sorted((ctx.up("engines") / PARITY_DIR).iterdir()):
        mask = np.load(d / MASK) if (d / MASK).is_file() else None
        report = compare(ctx.bundle, np.load(d / "onnx.npy"), np.load(d / "engine.npy"), mask,
                         atol, rtol)
        failed = report.pop("failures")
        report["limits"] = {"atol": atol, "rtol": rtol, report["measure"]: report["limit"]}
        report["gates"] = {g: "fail" if g in failed else "pass"
                           for g in ("elements", "cosine" if "min_cosine" in report else "tags")}
        report["passed"] = not failed
        reports[d.name] = report
        failures += [f"{d.name}: {why}" for why in failed.values()]
    if not reports:
        raise BuildError("the trt stage recorded no parity outputs; rebuild trt")
    lines = ["# TensorRT parity (against the fp32 ONNX model)", "",
             "| engine | rows | max abs diff | outside tolerance | measure | value | limit | "
             "result |", "|---|---|---|---|---|---|---|---|"]
    for sm, r in reports.items():
        value = r.get("min_cosine", r.get("tag_agreement"))
        lines.append(f"| {sm} | {r['rows']} | {r['max_abs_diff']:.3g} | "
                     f"{r['outside_tolerance']}/{r['elements']} | {r['measure']} | {value:.4f} | "
                     f"{r['limit']:g} | {'pass' if r['passed'] else 'FAIL'} |")
    return _finish(ctx, reports, "\n".join(lines) + "\n", failures,
                   lambda r: f"max |diff| {r['max_abs_diff']:.3g}, "
                             f"{r['measure']} {r.get('min_cosine', r.get('tag_agreement'))}")
