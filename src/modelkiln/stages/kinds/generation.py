"""text-generation: a decoder LLM shipped as sharded safetensors (as vLLM loads it), its tokenizer
with the chat template, generation_config.json, and an int8 ONNX model for CPU serving.

The ONNX export goes through optimum's `text-generation-with-past` task as one graph that takes
`past_key_values.<layer>.key/value` inputs beside input_ids, attention_mask and position_ids and
answers `present.<layer>.*` beside the logits: the first step reads the prompt with an empty past
(length 0), every later step only the new token with the previous step's presents, so a decoding
loop (gen_parity, `predict`) does linear work per token instead of rereading the sequence. Not
optimum's `monolith` export: for a decoder it drops the past inputs and keeps only the presents.

A registry entry of this kind records `backend_config` for a vLLM server: the served model id and
the launch arguments from the spec's `generation.serving`.
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
CODE_VERSION = "2"  # 2: past_key_values inputs (not the monolith export)


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
    # monolith=False: optimum-onnx 0.1 then writes one decoder graph with the past inputs (no
    # separate without-past file, no merged use_cache_branch graph to post-process)
    onnx_export_from_model(model, output=out, opset=opset, task=EXPORT_TASK, do_validation=False,
                           monolith=False, no_post_process=True)


def backend_config(bundle: Bundle, served_model_id: str) -> dict[str, Any]:
    """The registry entry's backend_config: how `vllm serve` runs the stored bundle."""
    g = spec(bundle)
    served = g.served_model_id or served_model_id
    return {"server": "vllm", "served_model_id": served,
            "launch_args": ["--served-model-name", served, "--dtype", "auto",
                            "--generation-config", "auto", *g.launch_args]}


def past_inputs(ctx: RunContext) -> list[str]:
    """The shipped ONNX graph's past_key_values inputs, as its gate found them ([] for the
    PyTorch bundle, which ships no graph)."""
    if "gen_parity" not in ctx.upstream:
        return []
    return [str(n) for n in ctx.up_stamp("gen_parity")["report"].get("past_key_values", [])]


def signature(ctx: RunContext) -> dict[str, Any]:
    g = spec(ctx.bundle)
    generation: dict[str, Any] = {"steps_gated": g.steps, "chat_template": True}
    past = past_inputs(ctx)
    if past:  # predict feeds the presents back as the past: one token per step
        generation["kv_cache"] = {
            "inputs": ["input_ids", "attention_mask", "position_ids", *past],
            "outputs": ["logits", *(n.replace("past_key_values", "present", 1) for n in past)]}
    return {"task": ctx.bundle.source.task, "input": "prompt", "max_length": g.max_length,
            "labels": [], "score": "none", "decision": "greedy decoding (generation_config.json)",
            "output": {"text": "the generated continuation", "tokens": "its token ids",
                       "finish": "eos or length"},
            "generation": generation}


def card(ctx: RunContext, backend: str, version: str, reports: dict[str, Report],
         tools: dict[str, str]) -> str:
    b = ctx.bundle
    gate = reports.get("gen_parity") or {}
    lines = [f"# {b.name} {version} ({backend})", "", b.description or "", "",
             f"- task: {b.source.task}: a decoder LLM; sharded safetensors, tokenizer with chat "
             "template, generation_config.json"]
    if gate:
        lines.append(f"- int8 vs PyTorch on {gate['rows']} prompts x {gate['steps']} greedy "
                     f"steps (decoded through the KV cache): agreement "
                     f"{gate['int8']['agreement']:.2%}, first-step max |logit diff| "
                     f"{gate['int8']['first_logit_diff']:.3g}")
    past = past_inputs(ctx)
    if past:
        lines.append(f"- ONNX graph: takes past key values ({len(past) // 2} layers, "
                     "past_key_values.<layer>.key/value) and answers present.<layer>.*: decoding "
                     "reads one new token per step through the KV cache")
    lines += ["- TensorRT: not built (an LLM engine needs TensorRT-LLM)", "",
              "tools: " + ", ".join(f"{k} {v}" for k, v in sorted(tools.items())), ""]
    return "\n".join(lines)


TRT_SKIP = ("no TensorRT engine for text-generation: an LLM engine is built by TensorRT-LLM "
            "(trtllm-build from the checkpoint, with the KV-cache, paged attention and in-flight "
            "batching plug-ins), which modelkiln's engine stage does not drive; serve the "
            "safetensors with vLLM (generation.serving) or the int8 ONNX model")

_SHARED = (("weights", None), ("tokenizer", None))
KIND = Kind(
    task="text-generation",
    drops=frozenset({"labels", "thresholds", "parity", "smoke", "engines", "trtparity"}),
    auto_class="AutoModelForCausalLM", output="logits", export=_export,
    export_params=export_params,
    # the tensorrt bundle reads the engine task, so it is shown skipped after it
    contents={"pytorch": _SHARED, "onnx": (*_SHARED, ("int8", None)),
              "tensorrt": (*_SHARED, ("trt", None))},
    reports={"pytorch": (), "onnx": ("gen_parity",), "tensorrt": ()},
    signature=signature, card=card, keep_shards=True, skips=(("trt", TRT_SKIP),))
