"""External data may only be a bare file name beside the model: crafted models prove the refusal.

These build ONNX files by hand (no export), so they run in a second.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelkiln.errors import BuildError
from modelkiln.stages.infer import ort_logits, ort_session
from modelkiln.stages.onnx import check_external_data

onnx = pytest.importorskip("onnx")
from onnx import ModelProto, TensorProto, helper, numpy_helper  # noqa: E402


def _model(weight: np.ndarray) -> ModelProto:
    """logits = input_ids(float) @ W: one MatMul whose weight is an initializer named W."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["logits"])], "g", [x], [y],
                              [numpy_helper.from_array(weight, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _point_at(path: Path, location: str) -> None:
    """Rewrite the model at `path` so W's data is 'external' at `location` (bytes not moved)."""
    model = onnx.load(str(path))
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    del w.external_data[:]
    for key, value in (("location", location), ("offset", "0"), ("length", "32")):
        w.external_data.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())


@pytest.fixture
def weight() -> np.ndarray:
    return np.arange(8, dtype=np.float32).reshape(4, 2)


def test_bare_external_data_file_is_accepted_and_loads(tmp_path: Path, weight: np.ndarray) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_model(weight), str(path), save_as_external_data=True, location="model.onnx_data",
              size_threshold=0)
    assert (tmp_path / "model.onnx_data").is_file()
    assert check_external_data(path) == ["model.onnx_data"]
    x = np.ones((3, 4), dtype=np.float32)
    out = ort_session(path).run(["logits"], {"x": x})[0]
    np.testing.assert_allclose(out, x @ weight)


def test_inline_model_has_no_external_data(tmp_path: Path, weight: np.ndarray) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_model(weight), str(path))
    assert check_external_data(path) == []


@pytest.mark.parametrize("location, why", [
    ("/etc/passwd", "absolute path"),
    ("../outside.bin", "'..' escapes"),
    ("..", "not a file name"),
    ("sub/weights.bin", "path separator"),
    ("sub\\weights.bin", "path separator"),
    ("C:weights.bin", "absolute path"),
    ("", "empty location"),
    ("missing.bin", "no such regular file"),
])
def test_escaping_locations_are_refused(tmp_path: Path, weight: np.ndarray, location: str,
                                        why: str) -> None:
    model_dir = tmp_path / "bundle"
    model_dir.mkdir()
    (tmp_path / "outside.bin").write_bytes(weight.tobytes())  # a real file the escape would hit
    (model_dir / "sub").mkdir()
    (model_dir / "sub" / "weights.bin").write_bytes(weight.tobytes())
    path = model_dir / "model.onnx"
    onnx.save(_model(weight), str(path))
    _point_at(path, location)
    with pytest.raises(BuildError) as err:
        check_external_data(path)
    assert why in str(err.value) and "refused external data" in str(err.value)
    # the loader every stage uses refuses it too, before onnxruntime reads anything
    with pytest.raises(BuildError, match="refused external data"):
        ort_logits(path, {"x": np.ones((1, 4), dtype=np.float32)})


def test_symlinked_data_file_is_refused(tmp_path: Path, weight: np.ndarray) -> None:
    (tmp_path / "secret.bin").write_bytes(weight.tobytes())
    model_dir = tmp_path / "bundle"
    model_dir.mkdir()
    (model_dir / "model.onnx_data").symlink_to(tmp_path / "secret.bin")
    path = model_dir / "model.onnx"
    onnx.save(_model(weight), str(path))
    _point_at(path, "model.onnx_data")
    with pytest.raises(BuildError, match="no such regular file"):
        check_external_data(path)


def test_tensor_inside_a_constant_node_is_checked(tmp_path: Path, weight: np.ndarray) -> None:
    """External data can hide in a Constant node's tensor attribute, not only in initializers."""
    const = numpy_helper.from_array(weight, "c")
    const.ClearField("raw_data")
    const.data_location = TensorProto.EXTERNAL
    const.external_data.add(key="location", value="../../etc/shadow")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])
    graph = helper.make_graph([helper.make_node("Constant", [], ["W"], value=const),
                               helper.make_node("MatMul", ["x", "W"], ["logits"])],
                              "g", [x], [y])
    path = tmp_path / "model.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(BuildError, match="escapes"):
        check_external_data(path)
