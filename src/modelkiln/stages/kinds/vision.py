"""image-classification: a ViT/ConvNeXt-style classifier whose bundle ships its image processor.

Single-label (softmax, the top label when its score reaches its threshold), like a text
classifier, so labels, thresholds and the decision rule are the shared ones
(artifacts/decisions.py); what differs is the input (pixel values made by the checkpoint's image
processor from an image file) and so the export, the gate's reading of calibration rows (each
names an image file) and the bundle (preprocessor_config.json in place of a tokenizer). The
export goes through optimum's `image-classification` task, as the text classifiers' does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...artifacts import names
from ...artifacts.decisions import DECISION_RULE, SINGLE_LABEL
from ...model.bundle import Bundle
from ..base import Report, RunContext
from . import Kind

EXPORT_TASK = "image-classification"
PROCESSOR = "preprocessor_config.json"
CODE_VERSION = "1"


def export_params(bundle: Bundle) -> dict[str, Any]:
    return {"kind": {"task": bundle.source.task, "code": CODE_VERSION}}


def _export(bundle: Bundle, weights: Path, out: Path, opset: int | None) -> None:
    import torch
    from optimum.exporters.onnx import onnx_export_from_model
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(
        str(weights), dtype=torch.float32, attn_implementation="eager").eval()
    onnx_export_from_model(model, output=out, opset=opset, task=EXPORT_TASK, do_validation=False,
                           monolith=True, no_post_process=True)


def signature(ctx: RunContext) -> dict[str, Any]:
    import json

    order = json.loads((ctx.up("labels") / names.LABEL_ORDER).read_bytes())
    return {"task": ctx.bundle.source.task, "input": "image", "max_length": 0,
            "labels": [str(x) for x in order], "score": "softmax",
            "decision": f"{DECISION_RULE[SINGLE_LABEL]} ({names.THRESHOLDS})",
            "output": {"labels": "the top label when its score reaches its threshold",
                       "scores": "label -> score in [0, 1]"},
            "image": {"processor": PROCESSOR, "input": "pixel_values"}}


def card(ctx: RunContext, backend: str, version: str, reports: dict[str, Report],
         tools: dict[str, str]) -> str:
    b = ctx.bundle
    gate = reports.get("vision_parity") or {}
    lines = [f"# {b.name} {version} ({backend})", "", b.description or "", "",
             f"- task: {b.source.task}: {', '.join(b.labels.names)} (softmax; the top label when "
             "its score reaches its threshold, thresholds.json)",
             f"- input: an image file, made into pixel_values by {PROCESSOR}"]
    if gate:
        lines.append(f"- int8 vs PyTorch on {gate['rows']} calibration images: top-1 agreement "
                     f"{gate['int8']['top_label_agreement']:.2%}, decision flip rate "
                     f"{gate['int8']['decision_flip_rate']:.2%}; fp32 max |logit diff| "
                     f"{gate['fp32']['max_abs_logit_diff']:.3g}")
    from ..trt_kinds import card_lines  # the tensorrt bundle's engine gate, when it has one

    lines += card_lines(reports)
    lines += ["", "tools: " + ", ".join(f"{k} {v}" for k, v in sorted(tools.items())), ""]
    return "\n".join(lines)


_SHARED = (("weights", None), ("image_processor", None), ("labels", None), ("thresholds", None))
KIND = Kind(
    task="image-classification",
    drops=frozenset({"tokenizer", "parity", "smoke"}),
    auto_class="AutoModelForImageClassification", output="logits", export=_export,
    export_params=export_params,
    # tensorrt: what the onnx bundle holds plus the engines (stages/trt_kinds: profiles, gate)
    contents={"pytorch": _SHARED, "onnx": (*_SHARED, ("int8", None)),
              "tensorrt": (*_SHARED, ("int8", None), ("engines", ("engines/",)))},
    reports={"pytorch": (), "onnx": ("vision_parity",),
             "tensorrt": ("vision_parity", "engines", "trtparity")},
    signature=signature, card=card, head=True)
