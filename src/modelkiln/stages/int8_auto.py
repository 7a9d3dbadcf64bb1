"""`quantize: auto`: try a small, fixed list of int8 settings and keep the smallest that passes.

Which int8 setting holds depends on the model and on the CPU's int8 kernels: on AVX2 without
VNNI, u8 x s8 products saturate in 16-bit sums, and 7-bit weights (`reduce_range`) avoid it; one
outlier row of an embedding table ruins a per-tensor quantized Gather; a few layers whose
activations carry outliers flip decisions no setting of the quantizer fixes, and keeping them
in float does. So instead of one default and a hint that guesses, the int8 stage quantizes every
candidate below, scores each with the parity gate's own measure (parity.compare: PyTorch logits
against the int8 model run one text at a time, decisions at the shipped thresholds, on the
parity gate's rows), and keeps the smallest model within the gate's flip limit. Among models
within 1 % of the fp32 size of the smallest passing one, the earlier in the list wins, so on a
CPU whose int8 is exact enough the old default is kept.

The list (`CANDIDATES`), in order of preference:
  default        dynamic, per-channel weights, full range (the quantizer's op types)
  reduce-range   the same with 7-bit weights (for CPUs without VNNI)
  per-tensor     one scale per weight tensor, 7-bit
  keep-head      reduce-range, the classifier head (every MatMul/Gemm after pooling) in float
  matmul-only    reduce-range, only MatMul quantized (embedding tables stay float)
  keep-drifting  reduce-range, the head and the nodes that add the most drift in float
  static         static Q/DQ, MatMul only, per-channel, 7-bit, MinMax on the calibration texts
A candidate whose settings equal an earlier one's (the head may be a Gemm, which dynamic mode
does not quantize anyway) is recorded as skipped. Every candidate's figures go into the stage's
report, from where the parity stage copies them into parity.json, the manifest and the card.

When none passes, the build fails naming every candidate's figure and the best one, and says
what to write to ship it (its settings, pinned, with the limit raised to its figure), never a
setting it already tried as if it might help.

The search is deterministic for one CPU class (int8 kernels differ between classes, which the
cache key already carries for this stage): fixed list, fixed rows, ties broken by list order.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import BuildError
from ..model.bundle import Quantize
from .base import Report

CANDIDATES_VERSION = "1"  # bump when the list or the ranking changes: the choice may change
SIZE_TOLERANCE = 0.01  # of the fp32 size: models this close in size count as equally small
DRIFT_ROWS = 16  # calibration texts run to find the nodes that add the most drift
HEAD_STOP = ("Gather", "Slice", "ReduceMean", "Squeeze")  # pooling: what comes after is the head
WEIGHT_OPS = ("MatMul", "Gemm", "Gather")  # ops whose weights int8 quantizes


@dataclass(frozen=True)
class Candidate:
    name: str
    settings: Quantize
    keep: str = ""  # "", "head" or "drifting": which nodes are kept in float, found per model


def candidates(calibration: Path | None) -> list[Candidate]:
    """The fixed list, in order of preference (see the module docstring)."""
    def q(mode: str = "dynamic", per_channel: bool = True, reduce_range: bool = True,
          op_types: tuple[str, ...] | None = None) -> Quantize:
        return Quantize(mode, "int8", per_channel, reduce_range, op_types, calibration)

    return [Candidate("default", q(reduce_range=False)),
            Candidate("reduce-range", q()),
            Candidate("per-tensor", q(per_channel=False)),
            Candidate("keep-head", q(), keep="head"),
            Candidate("matmul-only", q(op_types=("MatMul",))),
            Candidate("keep-drifting", q(), keep="drifting"),
            Candidate("static", q(mode="static", op_types=("MatMul",)))]


def spec_text(q: Quantize) -> str:
    """The settings as a YAML flow mapping to write under backends.onnx.quantize."""
    parts = [f"mode: {q.mode}", f"weight_type: {q.weight_type}",
             f"per_channel: {str(q.per_channel).lower()}",
             f"reduce_range: {str(q.reduce_range).lower()}"]
    if q.op_types:
        parts.append(f"op_types: [{', '.join(q.op_types)}]")
    if q.exclude_nodes:
        parts.append(f"exclude_nodes: [{', '.join(repr(n) for n in q.exclude_nodes)}]")
    return "{" + ", ".join(parts) + "}"


def settings_record(q: Quantize) -> dict[str, Any]:
    return {"mode": q.mode, "weight_type": q.weight_type, "per_channel": q.per_channel,
            "reduce_range": q.reduce_range, "op_types": list(q.op_types or ()),
            "exclude_nodes": list(q.exclude_nodes)}


# --- which nodes to keep in float -------------------------------------------------------------

def head_nodes(model: Any, output: str = "logits") -> list[str]:
    """The MatMul/Gemm nodes between pooling and `output`: the classifier head."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found: list[str] = []
    seen: set[str] = set()
    todo = [output]
    while todo and len(seen) < 64:
        node = producer.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ("MatMul", "Gemm"):
            found.append(node.name)
        if node.op_type in HEAD_STOP:
            continue
        todo.extend(i for i in node.input if i)
    return sorted(found)


def weight_nodes(model: Any) -> list[Any]:
    """Nodes that multiply by or look up a stored weight: what int8 quantizes."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        weight = 0 if n.op_type == "Gather" else 1 if n.op_type in ("MatMul", "Gemm") else -1
        if weight >= 0 and len(n.input) > weight and n.input[weight] in inits:
            out.append(n)
    return out


def drifting_nodes(fp32_path: Path, int8_path: Path, batch: dict[str, Any],
                   head: list[str]) -> list[tuple[str, float]]:
    """(node name, drift it adds) for the weight nodes that add the most, largest first.

    Each weight node's input and output are read from the fp32 and the int8 model on a few
    texts; the drift a node adds is the relative error of its output minus that of its input,
    so a deep node is not blamed for what its upstream did. Nodes adding at least three times
    the median are taken, at most a quarter of them and at least two.
    """
    import numpy as np

    import onnx

    fp32, int8 = onnx.load(str(fp32_path)), onnx.load(str(int8_path))
    produced = {o for n in int8.graph.node for o in n.output} | \
        {i.name for i in int8.graph.input}
    nodes = [n for n in weight_nodes(fp32) if n.name not in head and n.output[0] in produced]
    tensors = sorted({t for n in nodes for t in (n.input[0] if n.op_type != "Gather" else "",
                                                 n.output[0]) if t and t in produced})
    a = _run_with_outputs(fp32, tensors, batch)
    b = _run_with_outputs(int8, tensors, batch)

    def rel(t: str) -> float:
        num = sum(float(np.sum((x - y) ** 2)) for x, y in zip(a[t], b[t], strict=True))
        den = sum(float(np.sum(x ** 2)) for x in a[t]) or 1.0
        return math.sqrt(num / den)

    added = []
    for n in nodes:
        before = rel(n.input[0]) if n.op_type != "Gather" and n.input[0] in a else 0.0
        added.append((n.name, max(0.0, rel(n.output[0]) - before)))
    added.sort(key=lambda x: (-x[1], x[0]))
    if not added:
        return []
    median = sorted(d for _, d in added)[len(added) // 2]
    most = max(2, len(added) // 4)
    chosen = [x for x in added[:most] if x[1] >= 3 * median and x[1] > 0]
    return chosen if len(chosen) >= 2 else added[:min(2, len(added))]


def _run_with_outputs(model: Any, tensors: list[str], batch: dict[str, Any]
                      ) -> dict[str, list[Any]]:
    """Each text of `batch` run alone, returning the named intermediate tensors."""
    import numpy as np
    import onnxruntime as ort

    import onnx

    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in tensors if t not in have)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    mask = np.asarray(batch.get("attention_mask", np.ones_like(batch["input_ids"])))
    out: dict[str, list[Any]] = {t: [] for t in tensors}
    for i in range(min(DRIFT_ROWS, len(mask))):
        length = int(mask[i].sum())
        feed = {k: np.asarray(batch[k][i:i + 1, :length], dtype=np.int64) for k in names}
        for t, v in zip(tensors, session.run(tensors, feed), strict=True):
            out[t].append(np.asarray(v, dtype=np.float64))
    return out


# --- choosing ---------------------------------------------------------------------------------

def choose(results: list[Report], fp32_bytes: int) -> int | None:
    """Index of the kept candidate: the earliest passing one whose size is within
    SIZE_TOLERANCE of the fp32 size of the smallest passing one; None when none passes."""
    passing = [i for i, r in enumerate(results) if r.get("passed")]
    if not passing:
        return None
    smallest = min(results[i]["bytes"] for i in passing)
    return next(i for i in passing
                if results[i]["bytes"] <= smallest + SIZE_TOLERANCE * fp32_bytes)


def failure(results: list[Report], limit: float, cpu: str, best: Quantize | None) -> str:
    """Why quantize: auto found nothing, every figure, and what to write to ship the best."""
    scored = [r for r in results if "decision_flip_rate" in r]
    tried = ", ".join(f"{r['name']} {r['decision_flip_rate']:.2%}" for r in scored)
    if not scored or best is None:
        return (f"quantize: auto could not score any candidate on {cpu} "
                f"({'; '.join(r.get('skipped', '') for r in results)})")
    top = min(scored, key=lambda r: (r["decision_flip_rate"], r["bytes"]))
    return (f"quantize: auto tried {len(scored)} int8 settings on {cpu} and none keeps decision "
            f"flips within {limit:.2%} (flip rates: {tried}); the best is {top['name']} at "
            f"{top['decision_flip_rate']:.2%} (top-label agreement "
            f"{top['top_label_agreement']:.2%}). To ship it anyway, pin it and accept its "
            f"figure: backends.onnx.quantize: {spec_text(best)} and "
            f"backends.onnx.parity.max_decision_flip_rate: "
            f"{math.ceil(top['decision_flip_rate'] * 1e4) / 1e4:g}; or disable backends.onnx "
            "if that is too many flips")


def card_lines(record: Report) -> list[str]:
    """The model card's lines for a `quantize: auto` record: what was kept, every candidate."""
    lines = [f"- int8 settings chosen by `quantize: auto` on {record['cpu_class']}: "
             f"{record['chosen']} `{record['spec']}`; the candidates it scored on "
             f"{record['rows']} calibration texts:"]
    for c in record["candidates"]:
        if "decision_flip_rate" not in c:
            lines.append(f"  - {c['name']}: skipped ({c.get('skipped', '')})")
            continue
        lines.append(f"  - {c['name']}: {c['bytes'] / 1e6:.1f} MB, decision flip rate "
                     f"{c['decision_flip_rate']:.2%}, top-label agreement "
                     f"{c['top_label_agreement']:.2%}, {'pass' if c['passed'] else 'fail'}"
                     f"{' (kept)' if c.get('chosen') else ''}")
    return lines


def search(cands: list[Candidate], evaluate: Callable[[Quantize], tuple[int, Report]],
           keep_nodes: Callable[[Quantize, str], list[str]], fp32_bytes: int, limit: float,
           log: Callable[[str], None]) -> tuple[list[Report], Quantize | None]:
    """Score every candidate (`evaluate` quantizes or recalls it: its size and parity figures);
    return every candidate's record (the kept one marked `chosen`) and the kept settings, or
    when none passes, the best one's (lowest flip rate, then smallest)."""
    results: list[Report] = []
    settings: list[Quantize | None] = []
    for cand in cands:
        q = cand.settings
        if cand.keep:
            q = replace(q, exclude_nodes=tuple(keep_nodes(q, cand.keep)))
        record: Report = {"name": cand.name, "settings": settings_record(q)}
        same = next((r["name"] for r, s in zip(results, settings, strict=True) if s == q), None)
        skip = f"no {cand.keep} nodes that this mode quantizes" if cand.keep and \
            not q.exclude_nodes else f"same settings as {same}" if same else ""
        if not skip:
            log(f"candidate {cand.name}: {spec_text(q)}")
            try:
                size, figures = evaluate(q)
            except BuildError as exc:
                skip = f"quantization failed: {exc}"[:300]
        if skip:
            record["skipped"] = skip
            log(f"candidate {cand.name}: skipped ({skip})")
            results.append(record)
            settings.append(None)
            continue
        int8 = figures["int8"]
        record.update(bytes=size, size_ratio=round(size / fp32_bytes, 4),
                      decision_flip_rate=int8["decision_flip_rate"],
                      decision_flips=int8["decision_flips"], decisions=int8["decisions"],
                      top_label_agreement=int8["top_label_agreement"],
                      max_abs_score_diff=int8["max_abs_score_diff"],
                      passed=int8["decision_flip_rate"] <= limit)
        log(f"candidate {cand.name}: {size / 1e6:.1f} MB, flip rate "
            f"{int8['decision_flip_rate']:.2%} ({'pass' if record['passed'] else 'fail'})")
        results.append(record)
        settings.append(q)
    kept = choose(results, fp32_bytes)
    if kept is None:
        scored = [i for i, r in enumerate(results) if "decision_flip_rate" in r]
        best = min(scored, key=lambda i: (results[i]["decision_flip_rate"], results[i]["bytes"]),
                   default=None)
        return results, settings[best] if best is not None else None
    results[kept]["chosen"] = True
    return results, settings[kept]
