"""The files a spec points at, as a careless user or an attacker leaves them: every one is a spec
problem on one line (`file:line:col: key: what (fix)`), exit 3, never a traceback.

Most cases run `api.validate` in-process (the code path of `kiln validate`, minus printing); a few go
through the real `kiln` so the exit code and stderr are checked end to end.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import BIN
from model.test_checks import project, safetensors_bytes
from modelkiln import api
from modelkiln.errors import KilnError, SpecError

M = Path("bundles/m")


def problems(root: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The problem lines `kiln validate` reports in `root`; each must be one line."""
    monkeypatch.chdir(root)
    with pytest.raises(SpecError) as info:
        api.validate()
    lines = [str(p) for p in info.value.problems]
    assert all("\n" not in line and len(line.splitlines()) == 1 for line in lines), lines
    assert str(info.value).count("\n") == len(lines)
    return lines


def only(root: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    lines = problems(root, monkeypatch)
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("config, wanted", [
    ("[1, 2]", "bundles/m/ckpt/config.json must be a JSON object, got a list"),
    ('"a string"', "bundles/m/ckpt/config.json must be a JSON object, got a string"),
    ("null", "bundles/m/ckpt/config.json must be a JSON object, got null"),
    ('{"id2label": ["a", "b"]}', "bundles/m/ckpt/config.json id2label must be a JSON object, got a list"),
    ('{"id2label": 2}', "bundles/m/ckpt/config.json id2label must be a JSON object, got a number"),
    ('{"id2label": "ab"}', "bundles/m/ckpt/config.json id2label must be a JSON object, got a string"),
    ('{"id2label": {"0": "a", "2": "b"}}', 'bundles/m/ckpt/config.json id2label["1"] is missing'),
    ('{"id2label": {"0": "a", "1": null}}', 'bundles/m/ckpt/config.json id2label["1"] is missing'),
    ('{"id2label": {"0": "a", "1": 7}}', 'bundles/m/ckpt/config.json id2label["1"] is a number'),
    ("[" * 100_000 + "]" * 100_000, "bundles/m/ckpt/config.json: JSON nested too deeply to read"),
    ('{"id2label": {"0": "a",}', "bundles/m/ckpt/config.json:1:24: not valid JSON"),
    (b'{"x": "\xff"}', "bundles/m/ckpt/config.json: not UTF-8 (byte 0xff on line 1)"),
    ('{"a": ' + "9" * 5000 + "}", "bundles/m/ckpt/config.json: not valid JSON"),
])
def test_config_of_any_shape_is_one_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            config: str | bytes, wanted: str) -> None:
    project(tmp_path)
    target = tmp_path / M / "ckpt" / "config.json"
    target.write_bytes(config if isinstance(config, bytes) else config.encode())
    line = only(tmp_path, monkeypatch)
    assert line.startswith(f"bundles/x.yaml:6:15: source.checkpoint: {wanted}"), line


@pytest.mark.parametrize("order, wanted", [
    ("null", "label order must be a non-empty JSON list of strings, got null"),
    ("{}", "label order must be a non-empty JSON list of strings, got an object"),
    ("[]", "label order must be a non-empty JSON list of strings, got an empty list"),
    ('["a", 1]', "label order must be a non-empty JSON list of strings, got a list"),
    ("[" * 50_000, "bundles/m/label_order.json: JSON nested too deeply to read"),
])
def test_label_order_of_the_wrong_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       order: str, wanted: str) -> None:
    project(tmp_path)
    (tmp_path / M / "label_order.json").write_text(order)
    assert only(tmp_path, monkeypatch).startswith(f"bundles/x.yaml:9:10: labels.order: {wanted}")


@pytest.mark.parametrize("fields, got", [("null", "null"), ('["a", "b"]', "a list"), ("3", "a number")])
def test_label_fields_of_the_wrong_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        fields: str, got: str) -> None:
    project(tmp_path)
    (tmp_path / M / "fields.json").write_text(fields)
    assert only(tmp_path, monkeypatch) == (
        f"bundles/x.yaml:10:11: labels.fields: label fields must be a JSON object keyed by label, "
        f'got {got} ({{"label": {{...}}, ...}})')


@pytest.mark.parametrize("path, wanted", [
    ("m/" + "a" * 300, "has a component of 300 bytes, over the 255-byte limit of a file name"),
    ("m/" + "\u00e9" * 200, "has a component of 400 bytes"),
    ('m/a\\0b', "contains a NUL character"),
])
def test_impossible_path_is_a_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      path: str, wanted: str) -> None:
    spec = project(tmp_path)
    spec.write_text(spec.read_text().replace("order: m/label_order.json", f'order: "{path}"'))
    line = only(tmp_path, monkeypatch)
    assert line.startswith("bundles/x.yaml:9:10: labels.order: path '") and wanted in line, line


def test_symlink_loop_and_fifo_are_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project(tmp_path)
    os.unlink(tmp_path / M / "label_order.json")
    os.symlink("label_order.json", tmp_path / M / "label_order.json")
    os.unlink(tmp_path / M / "fields.json")
    os.mkfifo(tmp_path / M / "fields.json")
    lines = problems(tmp_path, monkeypatch)
    assert lines[0].startswith("bundles/x.yaml:9:10: labels.order: path 'm/label_order.json' cannot be "
                               "resolved") or "does not exist" in lines[0], lines
    assert lines[1] == "bundles/x.yaml:10:11: labels.fields: 'm/fields.json' is not a regular file " \
                       "(point at a file)"


ST = "bundles/x.yaml:6:15: source.checkpoint: bundles/m/ckpt/model.safetensors"
F32 = "F32"


def _t(begin: int, end: int, shape: list[int] | None = None, dtype: str = F32) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape if shape is not None else [(end - begin) // 4],
            "data_offsets": [begin, end]}


@pytest.mark.parametrize("content, wanted", [
    (safetensors_bytes({"w": _t(0, 16)}), "tensor 'w' ends at byte 16 of the data, past its end (8 bytes)"),
    (safetensors_bytes({"a": _t(0, 8), "b": _t(4, 8)}), "tensors 'a' and 'b' overlap"),
    (safetensors_bytes({"a": _t(4, 8)}), "no tensor holds bytes 0-4"),
    (safetensors_bytes({"a": _t(0, 8, [3])}), "tensor 'a' holds 8 bytes but F32 [3] needs 12"),
    (safetensors_bytes({"a": _t(8, 0, [0])}), "tensor 'a' has bad data_offsets [8, 0]"),
    (safetensors_bytes({"a": _t(0, 8, [-2])}), "tensor 'a' has a bad shape [-2]"),
    (safetensors_bytes({"a": _t(0, 8, None, "F128")}), "unknown dtype 'F128'"),
    (safetensors_bytes({"a": _t(0, 4)}), "4 bytes after the last tensor belong to none"),
    (safetensors_bytes([1, 2]), "header is a list, not a JSON object"),  # type: ignore[arg-type]
    ((10**12).to_bytes(8, "little") + b"{}", "header length 1000000000000 does not fit"),
    (b"\x05\x00", "2 bytes, too short for a safetensors header"),
    (b"\x04" + bytes(7) + b"{{{{", "header:1:2: not valid JSON"),
])
def test_lying_safetensors_header_fails_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    content: bytes, wanted: str) -> None:
    project(tmp_path)
    (tmp_path / M / "ckpt" / "model.safetensors").write_bytes(content)
    line = only(tmp_path, monkeypatch)
    assert line.startswith(ST) and wanted in line, line


def test_sharded_index_that_names_a_path_outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project(tmp_path)
    ckpt = tmp_path / M / "ckpt"
    os.unlink(ckpt / "model.safetensors")
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../x"}}))
    assert "weight_map names '../x', not a shard file beside the index" in only(tmp_path, monkeypatch)
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "s1.safetensors"}}))
    (ckpt / "s1.safetensors").write_bytes(safetensors_bytes({"w": _t(0, 32)}))
    assert "s1.safetensors: tensor 'w' ends at byte 32" in only(tmp_path, monkeypatch)


@pytest.mark.parametrize("task, problem_type, ok", [
    ("single-label-classification", "multi_label_classification", False),
    ("multi-label-classification", "single_label_classification", False),
    ("multi-label-classification", "regression", False),
    ("multi-label-classification", "multi_label_classification", True),
    ("single-label-classification", None, True),
])
def test_task_must_agree_with_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             task: str, problem_type: str | None, ok: bool) -> None:
    spec = project(tmp_path)
    spec.write_text(spec.read_text().replace("task: multi-label-classification", f"task: {task}"))
    config = {"id2label": {"0": "a", "1": "b"}, "problem_type": problem_type}
    (tmp_path / M / "ckpt" / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    if ok:
        assert [b.source.task for b in api.validate()] == [task]
        return
    line = only(tmp_path, monkeypatch)
    assert line.startswith(f"bundles/x.yaml:7:9: source.task: {task}, but bundles/m/ckpt/config.json "
                           f"says problem_type '{problem_type}'"), line


def test_kiln_validate_exit_3_one_line_each(tmp_path: Path) -> None:
    project(tmp_path)
    (tmp_path / M / "ckpt" / "config.json").write_text('"text"')
    (tmp_path / M / "label_order.json").write_text("null")
    done = subprocess.run([str(BIN / "kiln"), "validate"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "kiln: 2 problems found:"
    assert [line.split(": ")[1] for line in lines[1:]] == ["source.checkpoint", "labels.order"]


def test_nothing_but_kiln_errors_escape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory where a file belongs, everywhere at once: still problems, not OSErrors."""
    project(tmp_path)
    for name in ("ckpt/config.json", "label_order.json", "fields.json", "ckpt/model.safetensors"):
        target = tmp_path / M / name
        os.unlink(target)
        target.mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KilnError) as info:
        api.validate()
    assert isinstance(info.value, SpecError)


@pytest.mark.parametrize("onnx, opset", [("{}", None), ("{opset: 17}", 17)])
def test_onnx_opset_defaults_to_the_exporters_recommendation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             onnx: str, opset: int | None) -> None:
    from modelkiln.paths import Layout
    from modelkiln.stages import onnx as onnx_stage

    spec = project(tmp_path)
    text = spec.read_text().replace("  pytorch: {}\n", f"  onnx: {onnx}\n")
    spec.write_text(text.replace("strategy: fixed", "strategy: fixed\n  calibration: m/label_order.json"))
    monkeypatch.chdir(tmp_path)
    bundle = api.validate()[0]
    assert bundle.onnx is not None and bundle.onnx.opset == opset
    params = json.loads(onnx_stage.plan(bundle, Layout(tmp_path))[0].params)
    assert params["opset"] == opset
    assert ("exporter" in params) == (opset is None)  # the recommendation moves with the exporter
