"""Real TensorRT: build an engine from a small ONNX graph with the Python API. Needs an NVIDIA GPU
and the tensorrt package; skipped with the reason where either is missing (as on CI)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelkiln.artifacts.engine_key import probe_host
from modelkiln.stages import trt_builder

pytestmark = pytest.mark.gpu


def test_real_engine_builds_and_keeps_its_timing_cache(tmp_path: Path) -> None:
    why = probe_host().unusable()
    if why:
        pytest.skip(f"needs an NVIDIA GPU with TensorRT: {why}")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((1,), 2.0, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])], [w])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    request = trt_builder.BuildRequest(
        onnx=path, precision="fp16",
        profiles={"batch": {"min": 1, "opt": 4, "max": 8}, "sequence": {"min": 1, "opt": 8,
                                                                       "max": 16}},
        workspace_mb=256, optimization_level=1, hardware_compatibility="none",
        version_compatible=False, timing_cache=tmp_path / "timing.cache")
    builder = trt_builder.select(probe_host())
    built = builder.build(request)
    assert len(built.plan) > 1000 and request.timing_cache.stat().st_size > 0
    assert built.precision_mode == trt_builder.precision_mode(builder.version())
