"""feature-extraction: a sentence-embedding encoder whose ONNX graph answers one vector per text.

The export wraps the encoder in a small torch module that pools (mean over the attention mask,
or the first token) and, when the spec says so, L2-normalizes inside the graph: a serving side
feeds token ids and gets the embedding, with no pooling code of its own to get wrong. The wrapper
is exported with torch's own exporter: optimum's `feature-extraction` task exports the token
vectors (`last_hidden_state`), not a pooled sentence vector, and its sentence-transformers path
needs that library installed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import BuildError
from ...model.bundle import Bundle
from ...model.kinds import Embedding
from ..base import Report, RunContext
from . import Kind

OUTPUT = "sentence_embedding"
DEFAULT_OPSET = 17
CODE_VERSION = "1"


def spec(bundle: Bundle) -> Embedding:
    if bundle.embedding is None:
        raise BuildError(f"{bundle.spec_path.name}: feature-extraction needs the embedding section")
    return bundle.embedding


def export_params(bundle: Bundle) -> dict[str, Any]:
    e = spec(bundle)
    return {"kind": {"task": bundle.source.task, "code": CODE_VERSION, "pooling": e.pooling,
                     "normalize": e.normalize}}


def pooled_module(encoder: Any, pooling: str, normalize: bool) -> tuple[Any, bool]:
    """The encoder plus pooling (and L2 normalization) as one torch module: what gets exported;
    and whether it takes token_type_ids (BERT does, RoBERTa-style encoders do not)."""
    import inspect

    import torch

    takes_types = "token_type_ids" in inspect.signature(encoder.forward).parameters

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any,
                    token_type_ids: Any = None) -> Any:
            extra = {"token_type_ids": token_type_ids} if takes_types else {}
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  **extra).last_hidden_state
            if pooling == "cls":
                vec = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(vec, p=2.0, dim=1) if normalize else vec

    return Pooled().eval(), takes_types


def export_pooled(weights: Path, out: Path, opset: int | None, pooling: str,
                  normalize: bool) -> None:
    """Export the pooled encoder to out/model.onnx with dynamic batch and sequence axes."""
    import torch
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(weights), dtype=torch.float32,
                                        attn_implementation="eager").eval()
    module, takes_types = pooled_module(encoder, pooling, normalize)
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if takes_types else [])
    sample = tuple(torch.ones((2, 8), dtype=torch.int64) if n != "token_type_ids"
                   else torch.zeros((2, 8), dtype=torch.int64) for n in inputs)
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in inputs}
    axes[OUTPUT] = {0: "batch_size"}
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(module, sample, str(out / "model.onnx"), input_names=inputs,
                          output_names=[OUTPUT], dynamic_axes=axes,
                          opset_version=opset or DEFAULT_OPSET, dynamo=False)


def _export(bundle: Bundle, weights: Path, out: Path, opset: int | None) -> None:
    e = spec(bundle)
    export_pooled(weights, out, opset, e.pooling, e.normalize)


def signature(ctx: RunContext) -> dict[str, Any]:
    e = spec(ctx.bundle)
    return {"task": ctx.bundle.source.task, "input": "text", "max_length": e.max_length,
            "labels": [], "score": "none", "decision": "none",
            "output": {"embedding": f"list of {e.dimension} floats"
                                    + (" (unit length)" if e.normalize else "")},
            "embedding": {"dimension": e.dimension, "pooling": e.pooling,
                          "normalize": e.normalize, "max_length": e.max_length,
                          "output": OUTPUT}}


def card(ctx: RunContext, backend: str, version: str, reports: dict[str, Report],
         tools: dict[str, str]) -> str:
    """A short model card: what goes in, what comes out, and the gate's figures."""
    b, e = ctx.bundle, spec(ctx.bundle)
    gate = reports.get("embed_parity") or {}
    lines = [f"# {b.name} {version} ({backend})", "", b.description or "", "",
             f"- task: {b.source.task}: one {e.dimension}-float vector per text, "
             f"{e.pooling} pooling{', L2-normalized' if e.normalize else ''}, inside the graph",
             f"- input: text, at most {e.max_length} tokens (longer texts are truncated)"]
    if gate:
        lines.append(f"- int8 vs PyTorch on {gate['rows']} calibration texts: cosine min "
                     f"{gate['int8']['min_cosine']:.4f}, mean {gate['int8']['mean_cosine']:.4f}; "
                     f"top-{gate['limits']['top_k']} retrieval agreement "
                     f"{gate['int8']['topk_agreement']:.2%}")
    from ..trt_kinds import card_lines  # the tensorrt bundle's engine gate, when it has one

    lines += card_lines(reports)
    lines += ["", "tools: " + ", ".join(f"{k} {v}" for k, v in sorted(tools.items())), ""]
    return "\n".join(lines)


_SHARED = (("weights", None), ("tokenizer", None))
KIND = Kind(
    task="feature-extraction",
    drops=frozenset({"labels", "thresholds", "parity", "smoke"}),
    auto_class="AutoModel", output=OUTPUT, export=_export, export_params=export_params,
    # tensorrt: what the onnx bundle holds plus the engines (stages/trt_kinds: profiles, gate)
    contents={"pytorch": _SHARED, "onnx": (*_SHARED, ("int8", None)),
              "tensorrt": (*_SHARED, ("int8", None), ("engines", ("engines/",)))},
    reports={"pytorch": (), "onnx": ("embed_parity",),
             "tensorrt": ("embed_parity", "engines", "trtparity")},
    signature=signature, card=card)
