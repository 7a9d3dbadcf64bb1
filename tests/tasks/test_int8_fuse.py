"""The encoder kinds' int8 default (`quantize: auto`): onnxruntime's transformer fusions, then
dynamic int8 (stages/int8.py KIND_FUSE). The gates keep their real limits, so a fused graph that
drifted from PyTorch fails the build; the memory and tagger examples reach the size goal (int8 at
most 30 % of fp32) that the unfused default missed (39 %)."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from helpers import Project, make_project
from tasks.task_specs import ANALYST_SPEC, MEMORY_SPEC, TAGGER_SPEC, VISION_SPEC

pytestmark = pytest.mark.slow
EXPLICIT = "    quantize: {{mode: dynamic, weight_type: int8, per_channel: true}}\n"


def kind_default(spec: str) -> str:
    """The test spec with `quantize: auto` for its pinned int8 settings: the kind's default."""
    assert EXPLICIT in spec
    return spec.replace(EXPLICIT, "    quantize: auto\n")


def build(root: Path, inputs: Path, name: str, spec: str) -> Project:
    project = make_project(root, inputs, name=name, spec=kind_default(spec))
    done = project.doit(f"build:{name}")
    assert done.code == 0, done.output
    return project


def int8_report(project: Project) -> dict[str, object]:
    stamp = project.root / "build" / project.name / ".stamps" / "int8.json"
    report: dict[str, object] = json.loads(stamp.read_text())["report"]
    return report


@pytest.fixture(scope="module")
def memory_fused(tmp_path_factory: pytest.TempPathFactory, memory_inputs: Path) -> Project:
    return build(tmp_path_factory.mktemp("memory-fused"), memory_inputs, "memory", MEMORY_SPEC)


@pytest.fixture(scope="module")
def tagger_fused(tmp_path_factory: pytest.TempPathFactory) -> Project:
    from modelkiln import demo_fleet

    inputs = tmp_path_factory.mktemp("tagger-fused-inputs")
    texts = demo_fleet.make_ner_checkpoint(inputs / "checkpoint")
    demo_fleet.write_texts(inputs / "calibration.jsonl", texts[:40])
    (inputs / "label_order.json").write_text(json.dumps(list(demo_fleet.NER_LABELS)))
    (inputs / "registry_label_fields.json").write_text(json.dumps(
        {lab: {"entity": lab[2:] or "none"} for lab in demo_fleet.NER_LABELS}))
    return build(tmp_path_factory.mktemp("tagger-fused"), inputs, "tagger", TAGGER_SPEC)


def test_embedding_default_fuses_and_reaches_the_size_goal(memory_fused: Project) -> None:
    report = int8_report(memory_fused)
    ops = report["ops"]
    assert isinstance(ops, dict)
    assert report["fuse"] == "bert" and report["mode"] == "dynamic"
    assert ops.get("QAttention", 0) == 2 and ops.get("SkipLayerNormalization", 0) >= 2
    assert "Softmax" not in ops  # attention is one fused op per layer, not its pieces
    assert isinstance(report["size_ratio"], float) and report["size_ratio"] <= 0.30
    manifest = json.loads((memory_fused.dist("onnx") / "manifest.json").read_text())
    gate = manifest["parity"]["embed_parity"]
    assert gate["int8"]["min_cosine"] >= 0.99  # the spec's limit held (else the build failed)


def test_fused_embedding_bundle_serves_the_pytorch_vector(memory_fused: Project,
                                                          tmp_path: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    with tarfile.open(memory_fused.dist("onnx") / "bundle.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    text = "sedation2 patient airway sedation0"
    done = subprocess.run([sys.executable, "-m", "modelkiln.runtime", "predict", str(tmp_path)],
                          input=json.dumps({"text": text}) + "\n", capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = np.asarray(json.loads(done.stdout)["embedding"])
    ckpt = memory_fused.inputs / "checkpoint"
    tok, model = AutoTokenizer.from_pretrained(str(ckpt)), AutoModel.from_pretrained(str(ckpt))
    with torch.inference_mode():
        hidden = model(**tok([text], return_tensors="pt")).last_hidden_state[0].numpy()
    want = hidden.mean(0) / np.linalg.norm(hidden.mean(0))
    assert float(got @ want) > 0.99


def test_tagger_default_fuses_and_keeps_the_entities(tagger_fused: Project) -> None:
    report = int8_report(tagger_fused)
    ops = report["ops"]
    assert isinstance(ops, dict)
    assert report["fuse"] == "bert" and ops.get("QAttention", 0) == 2
    assert isinstance(report["size_ratio"], float) and report["size_ratio"] <= 0.30
    gate = json.loads((tagger_fused.dist("onnx") / "manifest.json").read_text())["parity"]
    assert min(gate["ner_parity"]["int8"]["per_label"].values()) >= 0.85


def test_vision_default_fuses_layer_norms(tmp_path: Path) -> None:
    from modelkiln import demo_fleet

    inputs = tmp_path / "inputs"
    held_out = demo_fleet.make_vision_checkpoint(inputs / "checkpoint", steps=20)
    demo_fleet.write_label_files(inputs, demo_fleet.VISION_LABELS)
    demo_fleet.write_images(inputs / "images", held_out[:40], inputs / "calibration.jsonl")
    project = build(tmp_path / "proj", inputs, "vision", VISION_SPEC)
    report = int8_report(project)
    ops = report["ops"]
    assert isinstance(ops, dict)
    assert report["fuse"] == "vit" and ops.get("SkipLayerNormalization", 0) >= 2
    assert ops.get("BiasGelu", 0) == 2  # one per layer


def test_pinned_settings_do_not_fuse(tmp_path: Path, memory_inputs: Path) -> None:
    """Only the kind's default fuses: a spec that pins its settings is quantized as written, and
    the analyst (a decoder) is never fused."""
    from modelkiln.api import discover, load_bundles_partial
    from modelkiln.stages import int8

    for name, spec in (("pinned", MEMORY_SPEC), ("auto", kind_default(MEMORY_SPEC)),
                       ("llm", ANALYST_SPEC.replace(
                           "    quantize: {{mode: dynamic, weight_type: int8, per_channel: true, "
                           "exclude_nodes: [/lm_head/MatMul]}}\n", "    quantize: auto\n"))):
        make_project(tmp_path, memory_inputs, name=name, spec=spec)
    (tmp_path / "bundles" / "llm" / "prompts.jsonl").write_text('{"prompt": "sedation2"}\n')
    bundles, broken = load_bundles_partial(discover([tmp_path / "bundles"]))
    assert not broken
    fuse = {b.name: int8.settings(b).fuse for b in bundles}
    assert fuse == {"pinned": "", "auto": "bert", "llm": ""}
