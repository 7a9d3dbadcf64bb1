"""The model card shows what the build computed, on a real built bundle.

Real parts: `doit build` of a tiny seeded BERT (PyTorch and the exported, quantized ONNX model with
its parity gate); the card, its chart and the manifest are read back from `bundle.tar.gz` and
compared with what the thresholds and parity stages recorded.
"""
from __future__ import annotations

import json
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from helpers import SPEC, Project, make_project
from modelkiln.paths import Layout
from modelkiln.stages.card import cell, thresholds_svg

pytestmark = pytest.mark.slow

CARD_SPEC = SPEC + """\
  onnx:
    quantize: {{mode: dynamic, weight_type: int8, per_channel: true}}
    parity: {{atol: 1.0e-3, max_decision_flip_rate: 1.0}}
card:
  intended_use: Suggest registry fields for a person to confirm.
  limitations: |
    Trained on synthetic notes only.
    Never decides a field alone.
  license: apache-2.0
  tags: [clinical-nlp]
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_inputs: Path) -> Project:
    project = make_project(tmp_path_factory.mktemp("card"), tiny_inputs, spec=CARD_SPEC)
    done = project.doit("build:tiny")
    assert done.code == 0, done.output
    return project


def _member(project: Project, backend: str, name: str) -> str:
    with tarfile.open(project.dist(backend) / "bundle.tar.gz") as tar:
        member = tar.extractfile(name)
        assert member is not None, f"{name} not in the {backend} bundle"
        return member.read().decode()


def _stamp_report(project: Project, stage: str) -> dict[str, object]:
    report = json.loads(Layout(project.root).stamp("tiny", stage).read_text())["report"]
    assert isinstance(report, dict)
    return report


def _table(text: str, header: str) -> dict[str, list[str]]:
    """Rows of the Markdown table whose header starts with `header`, by first cell."""
    lines = text.split(header, 1)[1].splitlines()[2:]
    rows = {}
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0]] = cells[1:]
    return rows


def test_front_matter_is_hugging_face_yaml(built: Project) -> None:
    card = _member(built, "onnx", "model_card.md")
    assert card.startswith("---\n")
    block = card.split("---\n", 2)[1]
    fields = dict(line.split(": ", 1) for line in block.strip().splitlines())
    assert json.loads(fields["license"]) == "apache-2.0"
    assert json.loads(fields["pipeline_tag"]) == "text-classification"
    assert json.loads(fields["library_name"]) == "onnx"
    tags = json.loads(fields["tags"])  # a YAML flow list of JSON strings reads as JSON too
    assert tags == ["modelkiln", "onnx", "multi-label-classification", "clinical-nlp"]
    pytorch = _member(built, "pytorch", "model_card.md")
    assert 'library_name: "transformers"' in pytorch


def test_per_label_metrics_and_threshold_match_the_thresholds_stage(built: Project) -> None:
    card = _member(built, "onnx", "model_card.md")
    cuts = json.loads(_member(built, "onnx", "thresholds.json"))
    metrics = json.loads((built.root / "build" / "tiny" / "thresholds" /
                          "threshold_metrics.json").read_text())
    rows = _table(card, "| label | threshold | precision | recall | F1 | support |")
    assert set(rows) == set(cuts)
    for label, (threshold, precision, recall, f1, support, how, _field) in rows.items():
        m = metrics[label]
        assert float(threshold) == pytest.approx(cuts[label], rel=1e-5)
        assert int(support) == m["support"]
        assert how.startswith(m["source"])
        for shown, key in ((precision, "precision"), (recall, "recall"), (f1, "f1")):
            if key in m:
                assert float(shown) == pytest.approx(m[key], abs=5e-4), (label, key)
            else:
                assert shown == "–"


def test_parity_table_matches_the_gate(built: Project) -> None:
    card = _member(built, "onnx", "model_card.md")
    parity = _stamp_report(built, "parity")
    per_label = parity["per_label"]
    assert isinstance(per_label, dict)
    rows = _table(card, "| label | int8 decision flips |")
    assert set(rows) == set(per_label)
    for label, (flips, rate, near, _fp32, _int8) in rows.items():
        assert int(flips) == per_label[label]["flips"]
        assert int(near) == per_label[label]["near_threshold"]
        assert rate == f"{per_label[label]['flip_rate']:.2%}"
    assert f"On {parity['rows']} calibration texts" in card
    assert "No parity gate ran" in _member(built, "pytorch", "model_card.md")


def test_intended_use_and_limitations_come_from_the_spec(built: Project) -> None:
    card = _member(built, "pytorch", "model_card.md")
    use = card.split("## Intended use", 1)[1].split("##", 1)[0]
    limits = card.split("## Limitations", 1)[1].split("##", 1)[0]
    assert "Suggest registry fields for a person to confirm." in use
    assert "Trained on synthetic notes only.\nNever decides a field alone." in limits


def test_chart_is_in_the_bundle_and_shows_each_labels_threshold_and_f1(built: Project) -> None:
    card = _member(built, "onnx", "model_card.md")
    assert "](model_card_thresholds.svg)" in card
    svg = _member(built, "onnx", "model_card_thresholds.svg")
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    titles = [t.text or "" for t in root.iter(f"{ns}title")]
    cuts = json.loads(_member(built, "onnx", "thresholds.json"))
    for label, cut in cuts.items():
        assert f"{label} threshold {min(max(cut, 0), 1):.3f}" in titles
    manifest = json.loads(_member(built, "onnx", "manifest.json"))
    assert "model_card_thresholds.svg" in {f["path"] for f in manifest["files"]}


def test_spec_without_a_card_section_says_so(tmp_path: Path, tiny_inputs: Path) -> None:
    project = make_project(tmp_path / "p", tiny_inputs)
    done = project.doit("build:tiny")
    assert done.code == 0, done.output
    card = _member(project, "pytorch", "model_card.md")
    assert "Not stated in the spec (`card.intended_use`)." in card
    assert 'license: "unknown"' in card


def test_svg_and_cells_escape_what_labels_may_hold() -> None:
    svg = thresholds_svg(["a<b&c"], {"a<b&c": 0.5}, {"a<b&c": {"f1": 0.75}})
    root = ET.fromstring(svg)  # well-formed despite the label
    assert any("a<b&c" in (t.text or "") for t in root.iter())
    assert cell("x|y\nz") == "x\\|y z"
    assert re.fullmatch(r"[^|]*(\\\|[^|]*)*", cell("a|b|c"))

