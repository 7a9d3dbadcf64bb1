"""ner_parity: a NER tagger's ONNX models must find the entities PyTorch finds, or it fails.

Each calibration text is tagged by PyTorch, fp32 ONNX (all at once) and int8 ONNX (one text at a
time, as served); tags become entities under the spec's `entities.aggregation` (simple, first,
average or max, as transformers' token-classification pipeline defines them) by the rule
`predict` serves with (artifacts/entities.py), as character spans. Per label, agreement is
matched entities (same span, same label) over the union of both sides' entities. Gates: fp32
logits within `backends.onnx.parity.atol`; int8's worst label's agreement at least
`entities.parity.min_agreement`.
"""
from __future__ import annotations

import json
from typing import Any

from ..artifacts import names
from ..errors import BuildError
from ..model.bundle import Bundle
from ..paths import Layout
from .base import Report, RunContext, StagePlan, params, stage_plan

REPORT = "ner_parity.json"
NAME = "ner_parity"
DOC = "gate a NER tagger: entity-level agreement (span + label) of ONNX with PyTorch, per label"
READS: tuple[str, ...] = ("weights", "tokenizer", "labels", "onnx", "int8")
WRITES: tuple[str, ...] | None = (REPORT,)
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
TOOLS: tuple[str, ...] = ("torch", "transformers", "tokenizers", "onnxruntime")
PLATFORM: str | None = None
CODE_VERSION = "2"  # 2: groups under the recorded aggregation (was simple only)

Span = tuple[int, int, str]  # start, end (characters), label


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    e = bundle.entities
    if e is None or bundle.onnx is None:
        return []
    return [stage_plan(
        bundle, layout, "ner_parity",
        doc=f"entity parity for {bundle.name}: int8 agreement >= {e.min_agreement:g} per label",
        inputs=(e.calibration,), upstream=READS,
        params=params(CODE_VERSION, atol=bundle.onnx.parity.atol, min_agreement=e.min_agreement,
                      aggregation=e.aggregation, max_length=e.max_length),
        backend="onnx")]


def spans(text: str, labels: list[str], logits: Any, enc: Any, subword: list[bool],
          aggregation: str) -> set[Span]:
    """The entities of one text's logits as (start, end, label) character spans."""
    from ..artifacts.entities import entities

    return {(e["start"], e["end"], e["entity"])
            for e in entities(text, labels, logits, enc["offset_mapping"],
                              enc["special_tokens_mask"], subword, aggregation)}


def subwords(tok: Any, text: str, enc: Any) -> list[bool]:
    """Which tokens continue a word, as the pipeline decides (artifacts/entities.py)."""
    from ..artifacts.entities import subword_flags

    prefix = getattr(tok.backend_tokenizer.model, "continuing_subword_prefix", None)
    return subword_flags(text, enc.tokens(), enc["offset_mapping"], enc["input_ids"],
                         tok.unk_token_id, prefix)


def agreement(ref: list[set[Span]], got: list[set[Span]], types: list[str]) -> Report:
    per = {}
    for t in types:
        a = [{s for s in r if s[2] == t} for r in ref]
        b = [{s for s in g if s[2] == t} for g in got]
        union = sum(len(x | y) for x, y in zip(a, b, strict=True))
        same = sum(len(x & y) for x, y in zip(a, b, strict=True))
        per[t] = round(same / union, 6) if union else 1.0
    union = sum(len(x | y) for x, y in zip(ref, got, strict=True))
    same = sum(len(x & y) for x, y in zip(ref, got, strict=True))
    return {"agreement": round(same / union, 6) if union else 1.0, "per_label": per,
            "entities": sum(len(x) for x in ref)}


def run(ctx: RunContext) -> Report:
    import numpy as np
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from .embed_parity import read_texts
    from .infer import ort_session
    from .int8 import OUTPUT as INT8
    from .onnx import MODEL

    e, atol = ctx.bundle.entities, ctx.onnx.parity.atol
    if e is None:
        raise BuildError(f"{ctx.plan.task}: the spec has no entities section")
    labels = [str(x) for x in json.loads((ctx.up("labels") / names.LABEL_ORDER).read_bytes())]
    types = sorted({lab[2:] for lab in labels if lab != "O"})
    texts = read_texts(e.calibration, None)
    tok = AutoTokenizer.from_pretrained(str(ctx.up("tokenizer") / names.TOKENIZER_DIR))
    model = AutoModelForTokenClassification.from_pretrained(str(ctx.up("weights"))).eval()
    fp32_s, int8_s = ort_session(ctx.up("onnx") / MODEL), ort_session(ctx.up("int8") / INT8)
    ref: list[set[Span]] = []
    fp32: list[set[Span]] = []
    int8: list[set[Span]] = []
    diff = 0.0
    for text in texts:
        enc = tok(text, truncation=True, max_length=e.max_length, return_offsets_mapping=True,
                  return_special_tokens_mask=True)
        feed = {k: np.asarray([enc[k]], dtype=np.int64) for k in tok.model_input_names if k in enc}
        with torch.inference_mode():
            logits = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits[0].numpy()
        wanted = [i.name for i in fp32_s.get_inputs()]
        f32 = fp32_s.run(["logits"], {n: feed[n] for n in wanted})[0][0]
        i8 = int8_s.run(["logits"], {n: feed[n] for n in wanted})[0][0]
        diff = max(diff, float(np.abs(f32 - logits).max()))
        subword = subwords(tok, text, enc)
        for out, rows in ((ref, logits), (fp32, f32), (int8, i8)):
            out.append(spans(text, labels, rows, enc, subword, e.aggregation))
    report: Report = {"rows": len(texts), "fp32": {**agreement(ref, fp32, types),
                                                    "max_abs_logit_diff": float(f"{diff:.6g}")},
                      "int8": agreement(ref, int8, types),
                      "aggregation": e.aggregation,
                      "limits": {"atol": atol, "min_agreement": e.min_agreement}}
    (ctx.out / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    bad = failures(report)
    if bad:
        raise BuildError(f"entity parity failed for {ctx.bundle.name}: {'; '.join(bad)}")
    ctx.log(f"ner_parity:{ctx.bundle.name}: int8 entity agreement {report['int8']['agreement']:.2%}")
    return report


def failures(report: Report) -> list[str]:
    lim, found = report["limits"], []
    if report["fp32"]["max_abs_logit_diff"] > lim["atol"]:
        found.append(f"fp32 ONNX logits differ from PyTorch by up to "
                     f"{report['fp32']['max_abs_logit_diff']:.3g} > atol {lim['atol']:g}")
    worst = sorted(report["int8"]["per_label"].items(), key=lambda kv: kv[1])
    low = [f"{lab} {rate:.2%}" for lab, rate in worst if rate < lim["min_agreement"]]
    if low:
        found.append(f"int8 entity agreement below {lim['min_agreement']:.2%} for {', '.join(low)}")
    return found
