"""Corrupted build inputs: each is refused with one line naming the file (and line), never a
traceback, never silently accepted. bench/reliability/inputs.py runs the whole corpus."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from helpers import LABELS, make_project
from modelkiln.errors import BuildError
from modelkiln.stages.infer import read_calibration
from stages.input_corpus import CASES, judge

GOOD = '{"text": "left knee", "labels": ["alpha"]}\n'


@pytest.mark.parametrize("row, wanted", [
    ('{"text": "a", "labels": null}', ":2: 'labels' must be a list of label names, got null"),
    ('{"text": "a", "labels": {"alpha": 1}}', ":2: 'labels' must be a list of label names, got an object"),
    ('{"text": "a", "labels": [["alpha"]]}', ":2: labels[0] must be a label name (a string), got a list"),
    ('{"text": "a", "labels": "alpha"}', ":2: 'labels' must be a list of label names, got a string"),
    ('{"text": null, "labels": []}', ":2: 'text' must be a string, got null"),
    ('{"text": ["a"], "labels": []}', ":2: 'text' must be a string, got a list"),
    ('{"labels": []}', ":2: missing 'text'"),
    ('{"text": "a"}', ":2: missing 'labels'"),
    ('["a", []]', ":2: expected a JSON object with 'text' and 'labels', got a list"),
    ('{"text": "a", "labels": ["zeta"]}', ":2: unknown labels 'zeta'"),
    ('{"text": "a", "labels": ' + "[" * 100_000 + "]" * 100_000 + "}", ":2: JSON nested too deeply"),
    ('{"text": "a", "labels": [}', ":2:26: not valid JSON"),
    (b'{"text": "caf\xe9", "labels": []}', ":2: not UTF-8 (byte 0xe9 at column 14)"),
])
def test_every_bad_calibration_row_is_one_line_naming_file_and_line(
        tmp_path: Path, row: str | bytes, wanted: str) -> None:
    path = tmp_path / "calibration.jsonl"
    path.write_bytes(GOOD.encode() + (row if isinstance(row, bytes) else row.encode()) + b"\n" + GOOD.encode())
    with pytest.raises(BuildError) as info:
        read_calibration(path, LABELS)
    message = str(info.value)
    assert message.startswith(f"{path}{wanted}"), message
    assert "\n" not in message


def test_good_calibration_rows_are_read(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\n  \n" + b'{"text": "b", "labels": [], "id": 3}\n')
    texts, truth = read_calibration(path, LABELS)
    assert texts == ["left knee", "b"]
    assert truth.tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("offsets, wanted", [
    ([0, 64], "ends at byte 64 of the data, past its end (32 bytes)"),
    ([0, 10**12], "ends at byte 1000000000000 of the data, past its end (32 bytes)"),
])
def test_lying_safetensors_header_names_the_file_at_build(tmp_path: Path, offsets: list[int],
                                                          wanted: str) -> None:
    from modelkiln.stages.weights import load_state_dict

    header = json.dumps({"w": {"dtype": "F32", "shape": [(offsets[1] - offsets[0]) // 4],
                               "data_offsets": offsets}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(32))
    with pytest.raises(BuildError) as info:
        load_state_dict(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'model.safetensors'}: ") and wanted in message, message
    assert "\n" not in message


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    "calibration: labels null", "calibration: labels an object", "calibration: text null",
    "calibration: non-UTF-8 line", "tokenizer.json: garbage bytes", "tokenizer.json: empty object",
    "config: a list", "label fields: null", "safetensors: overlapping tensors",
    "safetensors: tensors renamed",
])
def test_corpus_sample_is_refused_in_one_line(tmp_path: Path, tiny_inputs: Path,
                                              monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Validation, then the PyTorch stages in-process, exactly as bench/reliability/inputs.py."""
    case = next(c for c in CASES if c.name == name)
    project = make_project(tmp_path / "p", tiny_inputs)
    case.corrupt(project.inputs)
    monkeypatch.chdir(project.root)
    verdict = judge(project.spec)
    assert verdict.outcome in ("refused-at-validate", "refused-at-build"), verdict
    assert verdict.one_line or verdict.outcome == "refused-at-validate", verdict.message
    assert "bundles/tiny" in verdict.message, verdict.message  # the spec, or the file itself
