"""token-classification: a NER tagger; one BIO tag per token, entities as labelled character spans.

Labels are the shared stage's (label_order.json in the model's output order, checked against
config.json's id2label: a BIO order such as O, B-PROC, I-PROC); there are no thresholds (a
token's tag is its top-scoring label). The export goes through optimum's `token-classification`
task; the gate (stages/ner_parity) compares entities, not logits alone.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...artifacts import names
from ...model.bundle import Bundle
from ..base import Report, RunContext
from . import Kind

EXPORT_TASK = "token-classification"
CODE_VERSION = "1"


def export_params(bundle: Bundle) -> dict[str, Any]:
    return {"kind": {"task": bundle.source.task, "code": CODE_VERSION}}


def _export(bundle: Bundle, weights: Path, out: Path, opset: int | None) -> None:
    import torch
    from optimum.exporters.onnx import onnx_export_from_model
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(
        str(weights), dtype=torch.float32, attn_implementation="eager").eval()
    onnx_export_from_model(model, output=out, opset=opset, task=EXPORT_TASK, do_validation=False,
                           monolith=True, no_post_process=True)


def signature(ctx: RunContext) -> dict[str, Any]:
    order = json.loads((ctx.up("labels") / names.LABEL_ORDER).read_bytes())
    e = ctx.bundle.entities
    aggregation = e.aggregation if e else "simple"
    return {"task": ctx.bundle.source.task, "input": "text",
            "max_length": e.max_length if e else 128, "labels": [str(x) for x in order],
            "score": "argmax per token",
            "decision": f"BIO tags -> entities ({aggregation} aggregation)",
            "output": {"entities": "[{entity, start, end, text, score}] character spans"},
            "entities": {"scheme": "BIO", "aggregation": aggregation}}


def card(ctx: RunContext, backend: str, version: str, reports: dict[str, Report],
         tools: dict[str, str]) -> str:
    b = ctx.bundle
    gate = reports.get("ner_parity") or {}
    kinds_ = sorted({lab[2:] for lab in b.labels.names if lab != "O"})
    lines = [f"# {b.name} {version} ({backend})", "", b.description or "", "",
             f"- task: {b.source.task}: entity types {', '.join(kinds_)} (BIO tags per token, "
             f"{b.entities.aggregation if b.entities else 'simple'} aggregation)"]
    if gate:
        worst = min(gate["int8"]["per_label"].values(), default=1.0)
        lines.append(f"- int8 vs PyTorch on {gate['rows']} texts: entity agreement "
                     f"{gate['int8']['agreement']:.2%} (worst label {worst:.2%})")
    from ..trt_kinds import card_lines  # the tensorrt bundle's engine gate, when it has one

    lines += card_lines(reports)
    lines += ["", "tools: " + ", ".join(f"{k} {v}" for k, v in sorted(tools.items())), ""]
    return "\n".join(lines)


_SHARED = (("weights", None), ("tokenizer", None), ("labels", None))
KIND = Kind(
    task="token-classification",
    drops=frozenset({"thresholds", "parity", "smoke"}),
    auto_class="AutoModelForTokenClassification", output="logits", export=_export,
    export_params=export_params,
    # tensorrt: what the onnx bundle holds plus the engines (stages/trt_kinds: profiles, gate)
    contents={"pytorch": _SHARED, "onnx": (*_SHARED, ("int8", None)),
              "tensorrt": (*_SHARED, ("int8", None), ("engines", ("engines/",)))},
    reports={"pytorch": (), "onnx": ("ner_parity",),
             "tensorrt": ("ner_parity", "engines", "trtparity")},
    signature=signature, card=card, head=True)
