"""The ONNX lint on real small graphs made with onnx.helper: what TensorRT cannot take is refused
with a sentence, what it can take passes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import onnx
from modelkiln.artifacts.engine_key import Profiles
from modelkiln.stages.onnx_lint import lint
from onnx import TensorProto, helper, numpy_helper

PROFILES: Profiles = {"batch": {"min": 1, "opt": 8, "max": 32}, "sequence": {"min": 1, "opt": 64, "max": 64}}


def _model(nodes: list[onnx.NodeProto], inits: list[TensorProto], opset: int = 17,
           elem: int = TensorProto.FLOAT, batch: int | str = "batch",
           extra_opsets: tuple[tuple[str, int], ...] = ()) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", elem, [batch, "seq"])
    y = helper.make_tensor_value_info("y", elem, [batch, "seq"])
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    return helper.make_model(graph, opset_imports=opsets)


def _save(model: onnx.ModelProto, tmp_path: Path, **kw: object) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path), **kw)  # type: ignore[arg-type]
    return path


def _fp32(tmp_path: Path, *, opset: int = 17, batch: int | str = "batch") -> Path:
    w = numpy_helper.from_array(np.ones((1,), np.float32), "w")
    return _save(_model([helper.make_node("Mul", ["x", "w"], ["y"])], [w], opset=opset,
                        batch=batch), tmp_path)


def test_plain_fp32_model_passes(tmp_path: Path) -> None:
    report = lint(_fp32(tmp_path), "fp16", 10, PROFILES)
    assert report.problems == [] and report.ops == {"Mul": 1} and report.opset == 17


def test_dynamic_int8_is_refused(tmp_path: Path) -> None:
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
             helper.make_node("MatMulInteger", ["q", "w", "z", "wz"], ["i"]),
             helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT)]
    inits = [numpy_helper.from_array(np.ones((4, 4), np.int8), "w"),
             numpy_helper.from_array(np.zeros((), np.int8), "wz")]
    report = lint(_save(_model(nodes, inits), tmp_path), "fp16", 10, PROFILES)
    assert len(report.problems) == 1
    assert "MatMulInteger, DynamicQuantizeLinear (dynamic or QOperator int8)" in report.problems[0]
    assert "quantize.mode: static" in report.problems[0]


def test_onnxruntime_domain_and_opset_are_refused(tmp_path: Path) -> None:
    nodes = [helper.make_node("FusedMatMul", ["x", "x"], ["y"], domain="com.microsoft")]
    path = _save(_model(nodes, [], opset=8, extra_opsets=(("com.microsoft", 1),)), tmp_path)
    problems = " | ".join(lint(path, "fp32", 10, PROFILES).problems)
    assert "com.microsoft domain (FusedMatMul)" in problems
    assert "opset 8 is outside 9..20" in problems


def _qdq(tmp_path: Path, zp_type: type, zp: int, static: bool = True) -> Path:
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(zp, zp_type), "zero")
    inputs = ["x", "scale" if static else "x_scale", "zero"]
    nodes = [helper.make_node("QuantizeLinear", inputs, ["q"]),
             helper.make_node("DequantizeLinear", ["q", inputs[1], "zero"], ["y"])]
    if not static:
        nodes.insert(0, helper.make_node("ReduceMax", ["x"], ["x_scale"], keepdims=0))
    return _save(_model(nodes, [scale, zero]), tmp_path)


def test_int8_needs_static_symmetric_qdq(tmp_path: Path) -> None:
    assert lint(_qdq(tmp_path, np.int8, 0), "int8", 11, PROFILES).problems == []
    asym = lint(_qdq(tmp_path, np.uint8, 128), "int8", 10, PROFILES).problems
    assert any("asymmetric" in p for p in asym)
    dynamic = lint(_qdq(tmp_path, np.int8, 0, static=False), "int8", 11, PROFILES).problems
    assert any("computed at run time" in p for p in dynamic)
    no_qdq = lint(_fp32(tmp_path), "int8", 10, PROFILES).problems
    assert any("needs QuantizeLinear/DequantizeLinear" in p for p in no_qdq)


def test_trt11_takes_precision_from_the_graph(tmp_path: Path) -> None:
    fp32 = _fp32(tmp_path)
    assert lint(fp32, "fp16", 10, PROFILES).problems == []  # TensorRT 10: the FP16 flag
    problems = lint(fp32, "fp16", 11, PROFILES).problems
    assert len(problems) == 1 and "strongly typed" in problems[0]
    w16 = numpy_helper.from_array(np.ones((1,), np.float16), "w")
    fp16 = _save(_model([helper.make_node("Mul", ["x", "w"], ["y"])], [w16],
                        elem=TensorProto.FLOAT16), tmp_path)
    assert lint(fp16, "fp16", 11, PROFILES).problems == []


def test_external_data_is_found_and_a_missing_file_is_refused(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones((4096,), np.float32), "w")
    model = _model([helper.make_node("Mul", ["x", "w"], ["y"])], [w])
    path = _save(model, tmp_path, save_as_external_data=True, location="model.onnx.data",
                 size_threshold=0)
    report = lint(path, "fp16", 10, PROFILES)
    assert report.problems == [] and report.external_data == ["model.onnx.data"]
    (tmp_path / "model.onnx.data").unlink()
    problems = lint(path, "fp16", 10, PROFILES).problems
    assert problems and "external data file model.onnx.data" in problems[0]


def test_fixed_batch_contradicting_the_profile(tmp_path: Path) -> None:
    problems = lint(_fp32(tmp_path, batch=1), "fp16", 10, PROFILES).problems
    assert problems and "fixed batch size of 1, but the profile asks for 1..32" in problems[0]


def test_not_onnx_at_all(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00garbage")
    problems = lint(path, "fp16", 10, PROFILES).problems
    assert problems and "does not load as ONNX" in problems[0]


@pytest.mark.parametrize("major,opset,ok", [(10, 20, True), (10, 21, False), (11, 22, True)])
def test_opset_range_per_version(tmp_path: Path, major: int, opset: int, ok: bool) -> None:
    assert (lint(_fp32(tmp_path, opset=opset), "fp32", major, PROFILES).problems == []) is ok
