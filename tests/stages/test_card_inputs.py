"""The model card lists the model's real inputs: for an ONNX bundle the exported graph's inputs
with their dtypes and shapes (recorded in the onnx stage's stamp report), for a PyTorch bundle the
tokenizer's model_input_names (read from tokenizer_config.json), never a fixed `token_type_ids`
that an MPNet or RoBERTa does not take.

Real parts: `doit build` of a tiny seeded BERT (the ONNX one exported by the real exporter), the
bundle's tarball read back for its card.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from helpers import SPEC, Project, make_inputs, make_project
from modelkiln.paths import Layout
from modelkiln.stages.package import tokenizer_inputs

ONNX_SPEC = SPEC + """\
  onnx:
    quantize: {{mode: dynamic, weight_type: int8, per_channel: true}}
    parity: {{atol: 1.0e-3, max_decision_flip_rate: 1.0}}
"""


def card(project: Project, backend: str) -> str:
    with tarfile.open(project.dist(backend) / "bundle.tar.gz") as tar:
        member = tar.extractfile("model_card.md")
        assert member is not None
        return member.read().decode()


def inputs_section(text: str) -> str:
    return text.split("## Inputs and outputs", 1)[1].split("| label |", 1)[0]


def test_pytorch_card_names_the_tokenizers_inputs(tmp_path: Path, tiny_inputs: Path) -> None:
    project = make_project(tmp_path / "p", tiny_inputs)
    config = project.inputs / "checkpoint" / "tokenizer_config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, "model_input_names": ["input_ids", "attention_mask"]}))
    done = project.doit("build:tiny")
    assert done.code == 0, done.output
    section = inputs_section(card(project, "pytorch"))
    assert "`input_ids`, `attention_mask`" in section, section
    assert "token_type_ids" not in section, section


def test_tokenizer_inputs_from_its_config(tmp_path: Path) -> None:
    cases = {"mpnet": ({"tokenizer_class": "MPNetTokenizerFast"}, ["input_ids", "attention_mask"]),
             "bert": ({"tokenizer_class": "BertTokenizer"},
                      ["input_ids", "token_type_ids", "attention_mask"]),
             "saved": ({"tokenizer_class": "BertTokenizer", "model_input_names": ["input_ids"]},
                       ["input_ids"]),
             "broken": ("[1, 2", ["input_ids", "token_type_ids", "attention_mask"])}
    for name, (config, wanted) in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / "tokenizer_config.json").write_text(config if isinstance(config, str)
                                                 else json.dumps(config))
        assert tokenizer_inputs(d) == wanted, name
    assert tokenizer_inputs(tmp_path / "absent") == ["input_ids", "token_type_ids", "attention_mask"]


@pytest.mark.slow
def test_onnx_card_lists_the_exported_graphs_inputs(tmp_path: Path) -> None:
    make_inputs(tmp_path / "inputs", seed=2)
    project = make_project(tmp_path / "p", tmp_path / "inputs", spec=ONNX_SPEC)
    done = project.doit("build:tiny")
    assert done.code == 0, done.output
    stamp = json.loads(Layout(project.root).stamp("tiny", "onnx").read_bytes())
    graph = stamp["report"]["graph_inputs"]
    assert [(i["name"], i["dtype"], i["shape"]) for i in graph] == [
        (n, "int64", ["batch_size", "sequence_length"])
        for n in ("input_ids", "attention_mask", "token_type_ids")]
    section = inputs_section(card(project, "onnx"))
    for i in graph:
        assert f"| `{i['name']}` | int64 | batch_size × sequence_length |" in section, section
