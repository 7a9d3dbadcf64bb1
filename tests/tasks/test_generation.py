"""text-generation bundles: shards kept, tokenizer with chat template and generation config
shipped, the ONNX graph with past key values, the greedy gate through the KV cache (and its
failure on a broken past or a corrupted weight), vLLM backend_config in the registry, TensorRT
planned as a skip saying what an engine needs."""
from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

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


def _cases(project: Project, n: int, steps: int) -> tuple[dict[str, Any], list[Any]]:
    """The analyst's config and (prompt ids, PyTorch's greedy tokens, their logits) per prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelkiln.stages import gen_parity

    build = project.root / "build" / "analyst"
    tok = AutoTokenizer.from_pretrained(str(build / "tokenizer" / "tokenizer"))
    torch_model = AutoModelForCausalLM.from_pretrained(str(build / "weights")).eval()
    config = json.loads((build / "weights" / "config.json").read_text())
    cases = []
    for prompt in gen_parity.read_prompts(project.inputs / "prompts.jsonl")[:n]:
        ids = tok(prompt)["input_ids"]
        cases.append((ids, *gen_parity.greedy(torch_model, ids, steps)))
    return config, cases


def test_shipped_graph_takes_past_key_values(analyst_built: Project, tmp_path: Path) -> None:
    """The int8 graph in the bundle is the with-past decoder (past_key_values.* in, present.*
    out); the manifest's signature and the card say so, and the gate decoded through it."""
    import onnx

    dist = analyst_built.dist("onnx")
    with tarfile.open(dist / "bundle.tar.gz") as tar:
        tar.extract("registry_model_int8.onnx", tmp_path, filter="data")
    graph = onnx.load(str(tmp_path / "registry_model_int8.onnx"), load_external_data=False).graph
    inputs = [i.name for i in graph.input]
    past = [f"past_key_values.{layer}.{kv}" for layer in range(2) for kv in ("key", "value")]
    assert inputs == ["input_ids", "attention_mask", "position_ids", *past]
    assert {f"present.{layer}.{kv}" for layer in range(2) for kv in ("key", "value")} <= \
        {o.name for o in graph.output}
    assert any(n.op_type == "MatMulInteger" or n.op_type == "DynamicQuantizeLinear"
               for n in graph.node)  # int8 quantized the with-past graph
    manifest = json.loads((dist / "manifest.json").read_text())
    cache = manifest["signature"]["generation"]["kv_cache"]
    assert cache["inputs"][3:] == past and cache["outputs"][0] == "logits"
    assert manifest["parity"]["gen_parity"]["past_key_values"] == past
    assert manifest["parity"]["gen_parity"]["fp32"]["max_logit_diff"] < 1e-3
    card = tar_member(dist / "bundle.tar.gz", "model_card.md")
    assert "takes past key values (2 layers" in card and "through the KV cache" in card


def tar_member(tarball: Path, name: str) -> str:
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read().decode()


def _broken_past(model_path: Path, out: Path, how: str) -> None:
    """Write `model_path` with its past broken in a way an empty past (the first step) never
    shows: the past values halved, or position ids restarted at 0 on every call (the cached
    tokens' positions forgotten)."""
    import numpy as np

    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    if how == "values":
        targets = [i.name for i in graph.input if i.name.endswith(".value")]
    else:
        targets = ["position_ids"]
    added = []
    for name in targets:
        new = f"{name}/broken"
        for node in graph.node:
            node.input[:] = [new if x == name else x for x in node.input]
        if how == "values":
            graph.initializer.append(numpy_helper.from_array(np.asarray(0.5, dtype=np.float32), f"{name}/half"))
            added.append(helper.make_node("Mul", [name, f"{name}/half"], [new]))
        else:
            added.append(helper.make_node("ReduceMin", [name], [f"{name}/min"], keepdims=1))
            added.append(helper.make_node("Sub", [name, f"{name}/min"], [new]))
    nodes = [*added, *graph.node]  # the new nodes first: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(out))


@pytest.mark.parametrize("how", ["values", "positions"])
def test_gate_fails_on_a_broken_past(analyst_built: Project, tmp_path: Path, how: str) -> None:
    """A graph whose past is broken answers the first step (empty past) exactly: only decoding
    through the cache shows it, and the gate fails it on fp32's later-step logits."""
    from modelkiln.stages import gen_parity
    from modelkiln.stages.infer import ort_session

    good_path = analyst_built.root / "build" / "analyst" / "onnx" / "model.onnx"
    _broken_past(good_path, tmp_path / "model.onnx", how)
    config, cases = _cases(analyst_built, 6, 5)
    broken = gen_parity.measure(ort_session(tmp_path / "model.onnx"), config, cases)
    good = gen_parity.measure(ort_session(good_path), config, cases)
    assert broken["first_logit_diff"] < 1e-3 and broken["max_logit_diff"] > 5e-3
    limits = {"min_agreement": 0.9, "max_first_logit_diff": 1.0}
    failed = gen_parity.failures({"fp32": broken, "int8": good, "limits": limits})
    assert failed and any("past key/values" in f for f in failed), failed
    assert gen_parity.failures({"fp32": good, "int8": good, "limits": limits}) == []
    assert good["agreement"] == 1.0 and good["max_logit_diff"] < 1e-3


def test_gate_fails_on_a_corrupted_weight(analyst_built: Project, tmp_path: Path) -> None:
    import numpy as np

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
    config, cases = _cases(analyst_built, 6, 4)
    broken = gen_parity.measure(ort_session(tmp_path / "model.onnx"), config, cases)
    good = gen_parity.measure(ort_session(build / "onnx" / "model.onnx"), config, cases)
    limits = {"min_agreement": 0.9, "max_first_logit_diff": 1.0}
    assert gen_parity.failures({"fp32": broken, "int8": good, "limits": limits})
    assert gen_parity.failures({"fp32": good, "int8": good, "limits": limits}) == []
    assert np.isfinite(broken["first_logit_diff"]) and broken["first_logit_diff"] > 1e-3


def test_gate_refuses_a_graph_without_past_inputs(analyst_built: Project, tmp_path: Path) -> None:
    """optimum's monolith export (no past_key_values inputs) is not what the kind ships: the
    gate says to re-export with past, not a traceback."""
    import torch
    from optimum.exporters.onnx import onnx_export_from_model
    from transformers import AutoModelForCausalLM

    from modelkiln.errors import BuildError
    from modelkiln.stages import gen_parity
    from modelkiln.stages.infer import ort_session

    weights = analyst_built.root / "build" / "analyst" / "weights"
    model = AutoModelForCausalLM.from_pretrained(str(weights), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    onnx_export_from_model(model, output=tmp_path, task="text-generation-with-past",
                           do_validation=False, monolith=True, no_post_process=True)
    config, cases = _cases(analyst_built, 1, 2)
    with pytest.raises(BuildError, match="text-generation-with-past"):
        gen_parity.measure(ort_session(tmp_path / "model.onnx"), config, cases)


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


def test_tensorrt_plans_as_a_skip_with_what_an_engine_needs(analyst_built: Project) -> None:
    """backends.tensorrt on an LLM validates; `kiln plan` shows the engine task skipped with
    the reason (TensorRT-LLM) and the tensorrt bundle skipped after it; the build runs the
    rest and never the engine."""
    text = analyst_built.spec.read_text()
    analyst_built.spec.write_text(text.replace(
        "backends:\n", "backends:\n  tensorrt: {precision: fp16, when: gpu-available}\n"))
    try:
        done = analyst_built.kiln("validate")
        assert done.returncode == 0, done.stdout + done.stderr
        planned = analyst_built.kiln("plan", "--json")
        assert planned.returncode == 0, planned.stderr
        rows = {r["task"]: r for r in json.loads(planned.stdout)}
        assert rows["trt:analyst"]["action"] == "skip"
        assert "TensorRT-LLM" in rows["trt:analyst"]["reasons"][0]
        assert rows["package:analyst-tensorrt"]["action"] == "skip"
        assert rows["package:analyst-tensorrt"]["reasons"] == ["trt:analyst is skipped here"]
        assert "skip trt:analyst (no TensorRT engine for text-generation" in \
            analyst_built.kiln("plan").stdout
        built = analyst_built.doit("build:analyst")
        assert built.code == 0, built.output
        assert not {"trt:analyst", "package:analyst-tensorrt"} & built.executed
        assert not (analyst_built.root / "dist" / "analyst" / "1.0.0" / "tensorrt").exists()
    finally:
        analyst_built.spec.write_text(text)
    assert analyst_built.doit("build:analyst").code == 0


def test_tensorrt_int8_engine_of_an_llm_is_still_a_spec_error(analyst_built: Project) -> None:
    """A genuinely wrong tensorrt section stays a validation error (an int8 engine needs the
    static Q/DQ model, which a task kind does not make)."""
    text = analyst_built.spec.read_text()
    analyst_built.spec.write_text(text.replace(
        "backends:\n", "backends:\n  tensorrt: {precision: int8, when: gpu-available}\n"))
    try:
        done = analyst_built.kiln("validate")
    finally:
        analyst_built.spec.write_text(text)
    assert done.returncode != 0 and "backends.tensorrt.precision" in done.stderr
