"""text-generation bundles: shards kept, tokenizer with chat template and generation config
shipped, the greedy gate (and its failure on a corrupted weight), vLLM backend_config in the
registry, TensorRT refused with what an engine needs."""
from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from helpers import BIN, Project

pytestmark = pytest.mark.slow


def test_bundle_keeps_shards_and_ships_chat_files(analyst_built: Project) -> None:
    with tarfile.open(analyst_built.dist("onnx") / "bundle.tar.gz") as tar:
        names = set(tar.getnames())
    shards = {n for n in names if n.startswith("model-0") and n.endswith(".safetensors")}
    assert len(shards) == 4 and "model.safetensors.index.json" in names
    assert {"generation_config.json", "tokenizer/chat_template.jinja",
            "registry_model_int8.onnx"} <= names
    gate = json.loads((analyst_built.dist("onnx") / "manifest.json").read_text())["parity"]
    gate = gate["gen_parity"]
    assert gate["fp32"]["agreement"] == 1.0 and gate["fp32"]["first_logit_diff"] < 1e-3
    assert gate["int8"]["agreement"] >= 0.9


def test_gate_fails_on_a_corrupted_weight(analyst_built: Project, tmp_path: Path) -> None:
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import onnx
    from modelkiln.stages import gen_parity
    from modelkiln.stages.infer import ort_session
    from onnx import numpy_helper

    build = analyst_built.root / "build" / "analyst"
    model = onnx.load(str(build / "onnx" / "model.onnx"))
    weight = next(n for n in model.graph.node if n.name == "/lm_head/MatMul").input[1]
    target = next(t for t in model.graph.initializer if t.name == weight)
    values = numpy_helper.to_array(target).copy()
    values[:, :: 3] *= -1.0  # a third of the output projection's columns flipped
    target.CopyFrom(numpy_helper.from_array(values, target.name))
    onnx.save(model, str(tmp_path / "model.onnx"))
    tok = AutoTokenizer.from_pretrained(str(build / "tokenizer" / "tokenizer"))
    torch_model = AutoModelForCausalLM.from_pretrained(str(build / "weights")).eval()
    config = json.loads((build / "weights" / "config.json").read_text())
    cases = []
    for prompt in gen_parity.read_prompts(analyst_built.inputs / "prompts.jsonl")[:6]:
        ids = tok(prompt)["input_ids"]
        cases.append((ids, *gen_parity.greedy(torch_model, ids, 4)))
    broken = gen_parity.measure(ort_session(tmp_path / "model.onnx"), config, cases)
    good = gen_parity.measure(ort_session(build / "onnx" / "model.onnx"), config, cases)
    limits = {"min_agreement": 0.9, "max_first_logit_diff": 1.0}
    assert gen_parity.failures({"fp32": broken, "int8": good, "limits": limits})
    assert gen_parity.failures({"fp32": good, "int8": good, "limits": limits}) == []
    assert np.isfinite(broken["first_logit_diff"]) and broken["first_logit_diff"] > 1e-3


def test_registry_records_vllm_backend_config(analyst_built: Project, tmp_path: Path) -> None:
    env = {**os.environ, "MODEL_STORE_ROOT": str(tmp_path / "store")}
    env.pop("KILN_REGISTRY_DIR", None)
    done = subprocess.run([str(BIN / "kiln"), "publish"], cwd=analyst_built.root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    listed = subprocess.run([str(BIN / "kiln"), "registry", "list", "--role", "analyst", "--json"],
                            cwd=analyst_built.root, env=env, capture_output=True, text=True)
    entries = {e["name"]: e for e in json.loads(listed.stdout)}
    entry = entries["analyst-pytorch"]
    assert entry["task"] == "text-generation" and entry["capabilities"] == ["chat"]
    assert entry["backend_config"] == {
        "server": "vllm", "served_model_id": "analyst",
        "launch_args": ["--served-model-name", "analyst", "--dtype", "auto",
                        "--generation-config", "auto", "--max-model-len", "256"]}


def test_tensorrt_is_refused_with_what_an_engine_needs(analyst_built: Project) -> None:
    text = analyst_built.spec.read_text()
    analyst_built.spec.write_text(text.replace(
        "backends:\n", "backends:\n  tensorrt: {precision: fp16, when: gpu-available}\n"))
    try:
        done = analyst_built.kiln("validate")
    finally:
        analyst_built.spec.write_text(text)
    assert done.returncode != 0 and "TensorRT-LLM" in done.stderr
