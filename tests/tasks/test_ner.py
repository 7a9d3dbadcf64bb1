"""token-classification bundles: BIO label order, entity-level agreement per label, and the
gate's failure on an export whose head answers in the wrong label order."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from helpers import Project

pytestmark = pytest.mark.slow


def test_bundle_and_entity_gate(tagger_built: Project) -> None:
    dist = tagger_built.dist("onnx")
    with tarfile.open(dist / "bundle.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"label_order.json", "registry_model_int8.onnx", "tokenizer/tokenizer.json"} <= names
    assert "thresholds.json" not in names
    manifest = json.loads((dist / "manifest.json").read_text())
    assert manifest["signature"]["entities"] == {"scheme": "BIO", "aggregation": "simple"}
    gate = manifest["parity"]["ner_parity"]
    assert gate["rows"] == 40 and gate["fp32"]["agreement"] == 1.0
    assert set(gate["int8"]["per_label"]) == {"PROC", "DRUG"}
    assert min(gate["int8"]["per_label"].values()) >= 0.85


def test_spans_aggregate_bio_tags() -> None:
    import numpy as np

    from modelkiln.stages.ner_parity import agreement, spans

    labels = ["O", "B-PROC", "I-PROC", "B-DRUG", "I-DRUG"]
    tags = ["O", "B-PROC", "I-PROC", "O", "B-DRUG", "B-DRUG", "I-PROC"]
    rows = np.eye(len(labels))[[labels.index(t) for t in tags]] * 8.0
    enc = {"offset_mapping": [(0, 0), (0, 4), (5, 9), (10, 12), (13, 16), (17, 20), (21, 25)],
           "special_tokens_mask": [1, 0, 0, 0, 0, 0, 0]}
    found = spans("x" * 25, labels, rows, enc, [False] * 7, "simple")
    assert found == {(0, 9, "PROC"), (13, 16, "DRUG"), (17, 20, "DRUG"), (21, 25, "PROC")}
    report = agreement([found], [{(0, 9, "PROC"), (13, 16, "DRUG")}], ["DRUG", "PROC"])
    assert report["per_label"] == {"DRUG": 0.5, "PROC": 0.5}


def test_spec_records_an_aggregation_and_only_the_gate_reruns(tagger_built: Project) -> None:
    """entities.aggregation: max validates, reruns the entity gate (under max) and the
    packages that carry its figures, not the export; the manifest tells predict. An unknown
    strategy is a spec error naming the four."""
    spec = tagger_built.spec.read_text()
    try:
        tagger_built.spec.write_text(spec.replace("entities:\n", "entities:\n  aggregation: max\n"))
        done = tagger_built.doit("build:tagger")
        assert done.code == 0, done.output
        assert "ner_parity:tagger" in done.executed
        assert not {"onnx:tagger", "int8:tagger", "weights:tagger"} & done.executed
        manifest = json.loads((tagger_built.dist("onnx") / "manifest.json").read_text())
        assert manifest["signature"]["entities"]["aggregation"] == "max"
        assert manifest["parity"]["ner_parity"]["aggregation"] == "max"
        tagger_built.spec.write_text(spec.replace("entities:\n",
                                                  "entities:\n  aggregation: longest\n"))
        bad = tagger_built.kiln("validate")
        assert bad.returncode != 0 and "entities.aggregation" in bad.stderr
        assert "'average'" in bad.stderr or "average" in bad.stderr
    finally:
        tagger_built.spec.write_text(spec)
    assert tagger_built.doit("build:tagger").code == 0


def test_gate_fails_on_an_export_with_the_wrong_label_order(tagger_built: Project,
                                                            tmp_path: Path) -> None:
    """The head's rows for B-PROC and B-DRUG swapped: entities come out with the other label."""
    import numpy as np
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from modelkiln.stages import ner_parity
    from modelkiln.stages.embed_parity import read_texts
    from modelkiln.stages.infer import ort_session
    from modelkiln.stages.kinds.ner import _export

    build = tagger_built.root / "build" / "tagger"
    model = AutoModelForTokenClassification.from_pretrained(str(build / "weights"))
    with torch.no_grad():
        model.classifier.weight[:] = model.classifier.weight[[0, 3, 2, 1, 4]]
        model.classifier.bias[:] = model.classifier.bias[[0, 3, 2, 1, 4]]
    model.save_pretrained(str(tmp_path / "swapped"))
    _export(None, tmp_path / "swapped", tmp_path / "onnx", None)  # type: ignore[arg-type]
    labels = json.loads((build / "labels" / "label_order.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(build / "tokenizer" / "tokenizer"))
    session = ort_session(tmp_path / "onnx" / "model.onnx")
    ref: list[set[tuple[int, int, str]]] = []
    got: list[set[tuple[int, int, str]]] = []
    for text in read_texts(tagger_built.inputs / "calibration.jsonl", 20):
        enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        feed = {i.name: np.asarray([enc[i.name]], dtype=np.int64) for i in session.get_inputs()}
        good = AutoModelForTokenClassification.from_pretrained(str(build / "weights"))
        want = good(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits[0].detach()
        subword = ner_parity.subwords(tok, text, enc)
        for out, rows in ((ref, want.numpy()), (got, session.run(["logits"], feed)[0][0])):
            out.append(ner_parity.spans(text, labels, rows, enc, subword, "simple"))
    report = {"fp32": {"max_abs_logit_diff": 0.0}, "int8": ner_parity.agreement(ref, got,
                                                                               ["DRUG", "PROC"]),
              "limits": {"atol": 1e-4, "min_agreement": 0.85}}
    failed = ner_parity.failures(report)
    assert failed and "DRUG" in failed[0] and "PROC" in failed[0]


def test_label_order_must_be_bio(tagger_built: Project) -> None:
    order = tagger_built.inputs / "label_order.json"
    text = order.read_text()
    order.write_text(json.dumps(["O", "PROC", "I-PROC", "B-DRUG", "I-DRUG"]))
    try:
        done = tagger_built.kiln("validate")
    finally:
        order.write_text(text)
    assert done.returncode != 0 and "not a BIO label order" in done.stderr
