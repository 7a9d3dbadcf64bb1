"""onnx: the converted checkpoint -> `model.onnx` (fp32), exported with the Hugging Face exporter.

The export goes through optimum's `onnx_export_from_model` (torch's TorchScript exporter under
the hood), with dynamic `batch_size` and `sequence_length` axes on every input and on the logits,
at the spec's opset, or, when the spec names none, the opset the exporter recommends for the
architecture (which then depends on the installed exporter, so its version is in the params and an
upgrade re-exports). Its own output validation is turned off: the `parity` stage compares ONNX
with PyTorch on the calibration texts, which is the check that gates the bundle.

Models over 2 GB cannot live in one protobuf: the exporter then writes the weights to one
external data file beside the model. Every external-data `location` must be a bare file name in
the model's own directory; `check_external_data` refuses anything else (absolute paths, `..`,
separators), and every stage that loads an ONNX file calls it first, so a crafted model cannot
make a loader read outside the bundle.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import BuildError
from ..model.bundle import Bundle
from ..paths import Layout
from . import kinds
from .base import Report, RunContext, StagePlan, params, stage_plan, tool_versions

NAME = "onnx"
DOC = "export to ONNX (fp32) with dynamic batch and sequence axes"
READS: tuple[str, ...] = ("weights",)
WRITES: tuple[str, ...] | None = None  # the model plus the external data its report names (graph.remote.declared)
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
TOOLS: tuple[str, ...] = ("torch", "transformers", "optimum", "optimum-onnx", "onnx")
PLATFORM: str | None = None
CODE_VERSION = "2"  # 2: the report records the graph's inputs (name, dtype, shape) for the card
MODEL = "model.onnx"
EXPORT_TASK = "text-classification"  # the exporter's name for a sequence-classification head
DYNAMIC_AXES = ("batch_size", "sequence_length")


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    if bundle.onnx is None:
        return []
    return [stage_plan(
        bundle, layout, "onnx",
        doc=f"export {bundle.name} to ONNX fp32 ({_opset_text(bundle.onnx.opset)}, dynamic batch and "
            "sequence)",
        upstream=("weights",),
        # Only the export's own settings: thresholds, quantization and gates do not re-export.
        params=params(CODE_VERSION, opset=bundle.onnx.opset, dynamic_axes=list(DYNAMIC_AXES),
                      **({} if bundle.onnx.opset is not None else {"exporter": tool_versions("optimum")}),
                      **(kind.export_params(bundle) if (kind := kinds.kind_of(bundle)) else {})),
        backend="onnx")]


# --- external data: where an ONNX file may point a loader --------------------------------------

def _graph_tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto a graph holds: initializers, sparse initializers, node attributes, and
    the same inside subgraphs (If/Loop/Scan bodies)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def _bad_location(location: str) -> str | None:
    """Why `location` is not a bare file name, or None when it is one."""
    if not location:
        return "empty location"
    if "\x00" in location:
        return "NUL byte in location"
    if location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        return "absolute path"
    if location in (".", ".."):
        return "not a file name"
    if any(part == ".." for part in location.replace("\\", "/").split("/")):
        return "'..' escapes the model directory"
    if "/" in location or "\\" in location:
        return "path separator (only a bare file name beside the model is allowed)"
    return None


def external_locations(model: Any) -> list[tuple[str, str]]:
    """(tensor name, location) of every tensor whose data lives outside the protobuf."""
    from onnx import TensorProto

    found = []
    for tensor in _graph_tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        found.append((tensor.name, entries.get("location", "")))
    for func in model.functions:
        for node in func.node:
            for attr in node.attribute:
                if attr.HasField("t") and attr.t.data_location == TensorProto.EXTERNAL:
                    found.append((attr.t.name, {e.key: e.value for e in
                                                attr.t.external_data}.get("location", "")))
    return found


def check_external_data(path: Path) -> list[str]:
    """Refuse an ONNX file whose external data is anywhere but a regular file beside it.

    Reads only the protobuf (never the external data). Returns the sorted file names it uses.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise BuildError(f"{path}: not a readable ONNX model: {exc}; rebuild it") from None
    problems, files = [], set()
    for tensor, location in external_locations(model):
        why = _bad_location(location)
        target = path.parent / location
        if why is None and (target.is_symlink() or not target.is_file()):
            why = "no such regular file beside the model"
        if why:
            problems.append(f"tensor {tensor!r} -> {location!r}: {why}")
        else:
            files.add(location)
    if problems:
        shown = "; ".join(sorted(problems)[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise BuildError(f"{path}: refused external data: {shown}{more}; external data must be "
                         "one file named bare (e.g. model.onnx_data) in the model's directory")
    return sorted(files)


# --- the export --------------------------------------------------------------------------------

def _opset_text(opset: int | None) -> str:
    return f"opset {opset}" if opset is not None else "the exporter's recommended opset"


def _export(weights: Path, out: Path, opset: int | None) -> None:
    """Export with optimum; `opset` None lets it use the architecture's recommended opset (it
    warns when asked for one below that, and a spec that does not care should not see that)."""
    import torch
    from optimum.exporters.onnx import onnx_export_from_model
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(weights), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    onnx_export_from_model(model, output=out, opset=opset, task=EXPORT_TASK, do_validation=False,
                           monolith=True, no_post_process=True)


def run(ctx: RunContext) -> Report:
    import onnx

    opset = ctx.onnx.opset
    scratch = ctx.out / ".export"
    ctx.log(f"onnx:{ctx.bundle.name}: exporting at {_opset_text(opset)}")
    kind = kinds.kind_of(ctx.bundle)
    try:
        if kind is not None:  # a task kind exports its own graph (stages/kinds)
            kind.export(ctx.bundle, ctx.up("weights"), scratch, opset)
        else:
            _export(ctx.up("weights"), scratch, opset)
    except BuildError:
        raise
    except Exception as exc:
        raise BuildError(f"ONNX export failed at {_opset_text(opset)}: {type(exc).__name__}: "
                         f"{str(exc)[:400]}; try another opset (backends.onnx.opset)") from None
    exported = scratch / MODEL
    if not exported.is_file():
        got = sorted(p.name for p in scratch.iterdir())
        raise BuildError(f"the exporter wrote no {MODEL} (it wrote {got}); check the checkpoint")
    data_files = check_external_data(exported)
    for name in [MODEL, *data_files]:
        shutil.move(str(scratch / name), str(ctx.out / name))
    shutil.rmtree(scratch)
    model_path = ctx.out / MODEL
    onnx.checker.check_model(str(model_path))  # by path: works past 2 GB
    model = onnx.load(str(model_path), load_external_data=False)
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in model.graph.input}
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
               for o in model.graph.output}
    expected = kind.output if kind is not None else "logits"
    if expected not in outputs:
        raise BuildError(f"exported model has outputs {sorted(outputs)}, expected {expected!r}")
    size = sum((ctx.out / n).stat().st_size for n in [MODEL, *data_files])
    ctx.log(f"onnx:{ctx.bundle.name}: {size / 1e6:.1f} MB, inputs {sorted(inputs)}")
    used = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    return {"opset": used, "inputs": inputs, "outputs": outputs, "bytes": size,
            "external_data": data_files, "graph_inputs": graph_inputs(model)}


def graph_inputs(model: Any) -> list[dict[str, Any]]:
    """The exported graph's inputs in graph order: name, element type ("int64") and shape (a
    named dynamic axis or a fixed size per dimension); what the model card lists, since which
    inputs a model takes (token_type_ids or not) depends on its architecture."""
    from onnx import TensorProto

    return [{"name": i.name,
             "dtype": TensorProto.DataType.Name(i.type.tensor_type.elem_type).lower(),
             "shape": [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]}
            for i in model.graph.input]
