"""An embedding checkpoint (a bare encoder saved without a classification head) under a
classification spec: validation says the checkpoint has no head and which task would fit it,
instead of "the model's head has 0 outputs".

The checkpoints are real: a tiny BertModel and MPNetModel saved by transformers' save_pretrained,
exactly what a user downloads as a sentence-embedding model.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model.test_checks import project
from model.test_inputs import only

M = Path("bundles/m")


def save_encoder(kind: str, target: Path) -> None:
    """A tiny seeded bare encoder of `kind` ("bert" or "mpnet"), saved as a user would get it."""
    import torch
    from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel

    torch.manual_seed(0)
    small = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32}
    model = BertModel(BertConfig(**small)) if kind == "bert" else MPNetModel(MPNetConfig(**small))
    shutil.rmtree(target)
    model.save_pretrained(target)


@pytest.mark.parametrize("kind, arch", [("bert", "BertModel"), ("mpnet", "MPNetModel")])
def test_embedding_checkpoint_is_named_as_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              kind: str, arch: str) -> None:
    project(tmp_path)
    ckpt = tmp_path / M / "ckpt"
    save_encoder(kind, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["architectures"] == [arch] and "id2label" not in config
    line = only(tmp_path, monkeypatch)
    assert "source.task" in line and "no classification head" in line, line
    assert arch in line and "feature-extraction" in line, line
    assert "0 outputs" not in line


def test_config_without_labels_or_architectures_has_no_head(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    project(tmp_path)
    (tmp_path / M / "ckpt" / "config.json").write_text(json.dumps({"model_type": "mpnet"}))
    line = only(tmp_path, monkeypatch)
    assert "no classification head" in line and "neither id2label nor num_labels" in line, line


def test_a_classifier_keeps_its_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A *ForSequenceClassification config with the wrong label count is still about the count."""
    project(tmp_path, head=("a", "b", "c"))
    cfg = tmp_path / M / "ckpt" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()),
                               "architectures": ["MPNetForSequenceClassification"]}))
    line = only(tmp_path, monkeypatch)
    assert "2 labels, but the model's head has 3 outputs" in line, line
