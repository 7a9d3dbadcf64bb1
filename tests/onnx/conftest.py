"""One tiny ONNX-enabled project, built once per session and shared by the ONNX tests.

Tests that change the spec work on a copy (`project_copy`), so the shared build stays as built.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import LABELS, SPEC, Project, make_project

ONNX_SPEC = SPEC + """\
  onnx:
    quantize: {{mode: dynamic, weight_type: int8, per_channel: true}}
    parity: {{atol: 1.0e-4, max_decision_flip_rate: 0.1}}
"""


@pytest.fixture(scope="session")
def onnx_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded tiny multi-label BERT (hidden 64, 2 layers, trained until its labels separate),
    its label files and 120 calibration rows."""
    from modelkiln import demo

    directory = tmp_path_factory.mktemp("onnx-inputs")
    held_out = demo.make_checkpoint(directory / "checkpoint", LABELS, seed=1, hidden=64,
                                    layers=2, steps=150, rows=300)
    demo.write_label_files(directory, LABELS)
    demo.write_jsonl(directory / "calibration.jsonl", held_out[:120])
    return directory


@pytest.fixture(scope="session")
def onnx_built(tmp_path_factory: pytest.TempPathFactory, onnx_inputs: Path) -> Project:
    """The project after one full `doit build:tiny` (both backends)."""
    root = tmp_path_factory.mktemp("onnx-proj")
    project = make_project(root, onnx_inputs, spec=ONNX_SPEC)
    first = project.doit("build:tiny")
    assert first.code == 0, first.output
    (root / "first-build.log").write_text(first.output)  # what the exporter said, for the tests
    return project


@pytest.fixture
def project_copy(onnx_built: Project, tmp_path: Path) -> Project:
    """A private copy of the built project (stamps, outputs and all) to edit and rebuild."""
    root = tmp_path / "proj"
    shutil.copytree(onnx_built.root, root, symlinks=True, copy_function=shutil.copy2)
    return Project(root, onnx_built.name)
