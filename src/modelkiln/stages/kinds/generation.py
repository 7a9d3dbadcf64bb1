"""text-generation: a decoder LLM shipped as sharded safetensors (as vLLM loads it), its tokenizer
with the chat template, generation_config.json, and an int8 ONNX model for CPU serving.

The ONNX export goes through optimum's `text-generation-with-past` task (the graph answers the
present key/value tensors beside the logits, for a decoding loop that reuses them). A registry
entry of this kind records `backend_config` for a vLLM server: the served model id and the
launch arguments from the spec's `generation.serving`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import BuildError
from ...model.bundle import Bundle
from ...model.kinds import Generation
from ..base import Report, RunContext
from . import Kind

EXPORT_TASK = "text-generation-with-past"
CODE_VERSION = "1"


def spec(bundle: Bundle) -> Generation:
    if bundle.generation is None:
        raise BuildError(f"{bundle.spec_path.name}: text-generation needs the generation section")
    return bundle.generation


def export_params(bundle: Bundle) -> dict[str, Any]:
    return {"kind": {"task": bundle.source.task, "code": CODE_VERSION, "export": EXPORT_TASK}}


def _export(bundle: Bundle, weights: Path, out: Path, opset: int | None) -> None:
    import torch
    from optimum.exporters.onnx import onnx_export_from_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(weights), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    onnx_export_from_model(model, output=out, opset=opset, task=EXPORT_TASK, do_validation=False,
                           monolith=True, no_post_process=True)


def backend_config(bundle: Bundle, served_model_id: str) -> dict[str, Any]:
    """The registry entry's backend_config: how `vllm serve` runs the stored bundle."""
    g = spec(bundle)
    served = g.served_model_id or served_model_id
    return {"server": "vllm", "served_model_id": served,
            "launch_args": ["--served-model-name", served, "--dtype", "auto",
                            "--generation-config", "auto", *g.launch_args]}


def signature(ctx: RunContext) -> dict[str, Any]:
    g = spec(ctx.bundle)
    return {"task": ctx.bundle.source.task, "input": "prompt", "max_length": g.max_length,
            "labels": [], "score": "none", "decision": "greedy decoding (generation_config.json)",
            "output": {"text": "the generated continuation", "tokens": "its token ids",
                       "finish": "eos or length"},
            "generation": {"steps_gated": g.steps, "chat_template": True}}


def card(ctx: RunContext, backend: str, version: str, reports: dict[str, Report],
         tools: dict[str, str]) -> str:
    b = ctx.bundle
    gate = reports.get("gen_parity") or {}
    lines = [f"# {b.name} {version} ({backend})", "", b.description or "", "",
             f"- task: {b.source.task}: a decoder LLM; sharded safetensors, tokenizer with chat "
             "template, generation_config.json"]
    if gate:
        lines.append(f"- int8 vs PyTorch on {gate['rows']} prompts x {gate['steps']} greedy "
                     f"steps: agreement {gate['int8']['agreement']:.2%}, first-step max |logit "
                     f"diff| {gate['int8']['first_logit_diff']:.3g}")
    lines += ["- TensorRT: not built (an LLM engine needs TensorRT-LLM)", "",
              "tools: " + ", ".join(f"{k} {v}" for k, v in sorted(tools.items())), ""]
    return "\n".join(lines)


_SHARED = (("weights", None), ("tokenizer", None))
KIND = Kind(
    task="text-generation",
    drops=frozenset({"labels", "thresholds", "parity", "smoke", "trt", "engines", "trtparity",
                     "image", "imagetest"}),
    auto_class="AutoModelForCausalLM", output="logits", export=_export,
    export_params=export_params,
    contents={"pytorch": _SHARED, "onnx": (*_SHARED, ("int8", None))},
    reports={"pytorch": (), "onnx": ("gen_parity",)},
    signature=signature, card=card, keep_shards=True)
