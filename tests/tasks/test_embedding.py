"""feature-extraction bundles: pooling inside the ONNX graph, the embedding gate, the manifest's
embedding fields, predict's vector, and the spec rules of a task without labels."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from helpers import Project

pytestmark = pytest.mark.slow


def test_bundle_records_embedding_and_passes_gate(memory_built: Project) -> None:
    assert {"embed_parity:memory", "onnx:memory", "int8:memory"} <= {
        row["task"] for row in json.loads(memory_built.kiln("plan", "--json").stdout)}
    manifest = json.loads((memory_built.dist("onnx") / "manifest.json").read_text())
    sig = manifest["signature"]
    assert sig["task"] == "feature-extraction"
    # pooling, normalization and length come from the checkpoint's sentence-transformers files
    assert sig["embedding"] == {"dimension": 64, "pooling": "mean", "normalize": True,
                                "max_length": 128, "output": "sentence_embedding"}
    gate = manifest["parity"]["embed_parity"]  # the gate's report, under its stage name
    assert gate["rows"] == 60 and gate["fp32"]["min_cosine"] >= 0.9999
    assert gate["int8"]["min_cosine"] >= 0.99 and gate["int8"]["topk_agreement"] >= 0.8
    with tarfile.open(memory_built.dist("onnx") / "bundle.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"registry_model_int8.onnx", "tokenizer/tokenizer.json", "manifest.json"} <= names
    assert not {"label_order.json", "thresholds.json"} & names  # no labels in an embedding bundle


def test_predict_answers_the_vector_pytorch_gives(memory_built: Project, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    with tarfile.open(memory_built.dist("onnx") / "bundle.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    text = "sedation2 patient airway sedation0"
    done = subprocess.run([sys.executable, "-m", "modelkiln.runtime", "predict", str(tmp_path)],
                          input=json.dumps({"text": text}) + "\n", capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = np.asarray(json.loads(done.stdout)["embedding"])
    ckpt = memory_built.inputs / "checkpoint"
    tok, model = AutoTokenizer.from_pretrained(str(ckpt)), AutoModel.from_pretrained(str(ckpt))
    with torch.inference_mode():
        hidden = model(**tok([text], return_tensors="pt")).last_hidden_state[0].numpy()
    want = hidden.mean(0) / np.linalg.norm(hidden.mean(0))  # mean pooling, L2-normalized
    assert got.shape == (64,) and abs(np.linalg.norm(got) - 1) < 1e-4
    assert float(got @ want) > 0.99


@pytest.mark.parametrize("pooling, normalize", [("cls", True), ("mean", False)])
def test_gate_fails_on_an_export_that_pools_wrong(memory_built: Project, tmp_path: Path,
                                                  pooling: str, normalize: bool) -> None:
    """An export that dropped mean pooling (first token instead) or the normalization is
    caught by the gate against the spec's mean + L2 reference."""
    from modelkiln.api import load_bundles
    from modelkiln.stages import embed_parity as gate
    from modelkiln.stages.infer import encode
    from modelkiln.stages.kinds.embedding import export_pooled

    build = memory_built.root / "build" / "memory"
    export_pooled(build / "weights", tmp_path, None, pooling, normalize)
    texts = gate.read_texts(memory_built.inputs / "calibration.jsonl", None)
    batch = encode(build / "tokenizer" / "tokenizer", texts, 128)
    ref = gate.reference(build / "weights", batch, "mean", True)
    broken = gate.onnx_vectors(tmp_path / "model.onnx", batch, one_at_a_time=False)
    bundle = load_bundles([memory_built.spec])[0]
    failed = gate.failures(gate.compare(ref, broken, broken, 5), bundle)
    assert failed and "fp32 ONNX vs PyTorch" in failed[0]
    good = gate.onnx_vectors(build / "onnx" / "model.onnx", batch, one_at_a_time=False)
    assert gate.failures(gate.compare(ref, good, good, 5), bundle) == []


def test_topk_agreement_counts_shared_neighbours() -> None:
    from modelkiln.stages.embed_parity import topk_agreement

    ref = np.eye(4) + 0.1
    assert topk_agreement(ref, ref, 2) == 1.0
    shuffled = ref[:, ::-1].copy()  # same vectors, other coordinates: neighbours change
    shuffled[0] = ref[3]
    assert topk_agreement(ref, shuffled, 1) < 1.0


def _validate(project: Project, spec: str) -> subprocess.CompletedProcess[str]:
    project.spec.write_text(spec)
    return project.kiln("validate")


def test_validate_says_which_sections_a_task_needs(memory_inputs: Path, tmp_path: Path) -> None:
    from helpers import SPEC, make_project
    from tasks.task_specs import MEMORY_SPEC

    project = make_project(tmp_path, memory_inputs, name="memory", spec=MEMORY_SPEC)
    assert project.kiln("validate").returncode == 0
    no_section = MEMORY_SPEC.format(name="memory").split("embedding:")[0] + \
        "backends:\n  pytorch: {}\n"
    done = _validate(project, no_section)
    assert done.returncode != 0 and "embedding" in done.stdout + done.stderr
    with_labels = MEMORY_SPEC.format(name="memory") + \
        "labels: {order: memory/x.json, fields: memory/y.json}\n"
    done = _validate(project, with_labels)
    assert done.returncode != 0 and "feature-extraction has no labels" in done.stderr
    classifier = SPEC.format(name="memory").replace(
        "thresholds:\n  strategy: f1-optimal\n  default: 0.5\n  calibration: memory/calibration.jsonl\n", "")
    done = _validate(project, classifier)
    assert done.returncode != 0 and "thresholds" in done.stdout + done.stderr
    assert "required when source.task is" in done.stderr
