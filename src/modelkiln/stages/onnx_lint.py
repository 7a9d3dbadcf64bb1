"""Lint an ONNX model before TensorRT sees it, with the CPU `onnx` package.

TensorRT's builder reports an unsupported graph as a parser error deep in a long log, or crashes.
The usual reasons are known in advance and cheap to check on the graph itself:

- dynamic int8 (what onnxruntime's dynamic quantization writes: MatMulInteger,
  DynamicQuantizeLinear, ConvInteger) and the QOperator format (QLinearMatMul, QLinearConv ...):
  TensorRT takes int8 only as QuantizeLinear/DequantizeLinear pairs (Q/DQ);
- Q/DQ that is asymmetric (uint8, or a non-zero zero point) or dynamic (scales computed at run
  time): TensorRT needs static, symmetric int8;
- operators of onnxruntime's own domain (com.microsoft), which no TensorRT parser knows;
- an opset outside what modelkiln builds from on that TensorRT version;
- external data files that are missing or point outside the model's directory;
- precision the graph cannot give: TensorRT 11 and later take precision from the graph (strongly
  typed), so fp16 needs float16 tensors and int8 needs Q/DQ; TensorRT 10 sets fp16 by a flag but
  int8 only from Q/DQ here (no calibrator);
- model inputs whose fixed dimensions contradict the optimization profile.

Each problem is one sentence with a fix. `onnx` is imported inside `load` only.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifacts.engine_key import Profiles

if TYPE_CHECKING:
    from onnx import ModelProto

DYNAMIC_INT8 = ("MatMulInteger", "DynamicQuantizeLinear", "ConvInteger")
QOPERATOR = ("QLinearMatMul", "QLinearConv", "QLinearAdd", "QLinearMul", "QGemm")
QDQ = ("QuantizeLinear", "DequantizeLinear")
OPSETS = {10: (9, 20), 11: (9, 22)}  # TensorRT major -> opsets modelkiln builds from
DEFAULT_OPSETS = (9, 22)
_FLOAT16, _INT8, _UINT8 = 10, 3, 2  # onnx.TensorProto element types


@dataclass
class LintReport:
    """What the lint saw and what it refuses; `problems` empty means the model may be built."""

    opset: int
    ops: dict[str, int]
    external_data: list[str]
    qdq: bool
    float16: bool
    problems: list[str] = field(default_factory=list)


def load(path: Path) -> ModelProto:
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _external(model: ModelProto, base: Path, problems: list[str]) -> list[str]:
    """External data files named by initializers; a missing or escaping one is a problem."""
    names: set[str] = set()
    for init in model.graph.initializer:
        if init.data_location != 1:  # onnx.TensorProto.EXTERNAL
            continue
        loc = next((e.value for e in init.external_data if e.key == "location"), "")
        rel = Path(loc)
        if not loc or rel.is_absolute() or ".." in rel.parts:
            problems.append(f"initializer {init.name} keeps its data at {loc!r}, outside the "
                            "model's directory; re-export with external data beside the model")
        elif not (base / rel).is_file():
            problems.append(f"external data file {loc} (for {init.name}) is missing beside "
                            f"{base}; copy it next to the model or re-export")
        names.add(loc)
    return sorted(names)


def _zero_points_symmetric(model: ModelProto) -> tuple[bool, bool]:
    """(every Q/DQ zero point is int8 and zero, every Q/DQ scale is a constant)."""
    from onnx import numpy_helper

    consts = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute:
            consts[node.output[0]] = node.attribute[0].t
    symmetric = static = True
    for node in model.graph.node:
        if node.op_type not in QDQ:
            continue
        if len(node.input) < 2 or node.input[1] not in consts:
            static = False
        if len(node.input) >= 3 and node.input[2]:
            zp = consts.get(node.input[2])
            if zp is None or zp.data_type != _INT8 or numpy_helper.to_array(zp).any():
                symmetric = False
    return symmetric, static


def _has_float16(model: ModelProto) -> bool:
    tensors = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    return any(t.type.tensor_type.elem_type == _FLOAT16 for t in tensors) or \
        any(i.data_type == _FLOAT16 for i in model.graph.initializer)


def _inputs(model: ModelProto, profiles: Profiles,
            problems: list[str]) -> None:
    """Fixed input dimensions must admit every shape of the profile (batch x sequence)."""
    initializers = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        dims = inp.type.tensor_type.shape.dim
        for axis, what, want in ((0, "batch", profiles["batch"]),
                                 (1, "sequence", profiles["sequence"])):
            if axis >= len(dims) or not dims[axis].HasField("dim_value"):
                continue
            fixed = dims[axis].dim_value
            if not want["min"] == want["max"] == fixed:
                problems.append(f"input {inp.name} has a fixed {what} size of {fixed}, but the "
                                f"profile asks for {want['min']}..{want['max']}; export with a "
                                f"dynamic {what} axis or set profiles.{what} to {fixed}")


def lint_model(model: ModelProto, base: Path, precision: str, trt_major: int | None,
               profiles: Profiles) -> LintReport:
    """Lint a loaded model (its external data files are looked for under `base`)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    ops = dict(sorted(Counter(n.op_type for n in model.graph.node).items()))
    problems: list[str] = []
    external = _external(model, base, problems)
    report = LintReport(opset, ops, external, any(op in ops for op in QDQ), _has_float16(model),
                        problems)
    low, high = OPSETS.get(trt_major or 0, DEFAULT_OPSETS)
    if not low <= opset <= high:
        problems.append(f"opset {opset} is outside {low}..{high}, what modelkiln builds from on "
                        f"TensorRT {trt_major or '(any)'}; set backends.onnx.opset in that range")
    dynamic = [op for op in (*DYNAMIC_INT8, *QOPERATOR) if op in ops]
    if dynamic:
        problems.append(f"the model uses {', '.join(dynamic)} (dynamic or QOperator int8), which "
                        "TensorRT cannot take: build the engine from the fp32 model "
                        "(precision: fp16 or fp32), or quantize statically to Q/DQ "
                        "(backends.onnx.quantize.mode: static)")
    foreign = sorted({n.op_type for n in model.graph.node if n.domain == "com.microsoft"})
    if foreign:
        problems.append(f"operators of onnxruntime's com.microsoft domain ({', '.join(foreign)}) "
                        "have no TensorRT equivalent; export without onnxruntime graph fusions")
    _precision(model, report, precision, trt_major)
    _inputs(model, profiles, problems)
    return report


def _precision(model: ModelProto, report: LintReport, precision: str,
               trt_major: int | None) -> None:
    typed = trt_major is not None and trt_major >= 11
    if precision == "int8":
        if not report.qdq:
            report.problems.append("precision int8 needs QuantizeLinear/DequantizeLinear (Q/DQ) "
                                   "nodes in the model; modelkiln does not calibrate inside "
                                   "TensorRT: quantize statically first, or use fp16")
        else:
            symmetric, static = _zero_points_symmetric(model)
            if not symmetric:
                report.problems.append("the Q/DQ nodes are asymmetric (uint8 or non-zero zero "
                                       "points); TensorRT needs symmetric int8 with zero point 0")
            if not static:
                report.problems.append("the Q/DQ scales are computed at run time; TensorRT "
                                       "needs static (constant) scales")
    elif precision == "fp16" and typed and not report.float16:
        report.problems.append(f"TensorRT {trt_major} takes precision from the ONNX graph "
                               "(strongly typed) and this model has no float16 tensors; export "
                               "an fp16 model or set backends.tensorrt.precision: fp32")
    elif precision == "fp32" and report.qdq:
        report.problems.append("the model holds Q/DQ nodes but precision is fp32; set "
                               "backends.tensorrt.precision: int8 or build from the fp32 model")


def lint(path: Path, precision: str, trt_major: int | None,
         profiles: Profiles) -> LintReport:
    """Load `path` (without its external data) and lint it."""
    try:
        model = load(path)
    except Exception as exc:
        return LintReport(0, {}, [], False, False,
                          [f"{path.name} does not load as ONNX ({type(exc).__name__}: {exc})"])
    return lint_model(model, path.parent, precision, trt_major, profiles)


def summary(report: LintReport) -> dict[str, Any]:
    """The JSON-able part of a report that goes into the trt stage's report."""
    return {"opset": report.opset, "ops": report.ops, "external_data": report.external_data,
            "qdq": report.qdq, "float16": report.float16}
