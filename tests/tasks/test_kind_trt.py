"""TensorRT for the encoder kinds: trt/engines/trtparity in the graph (skipped with the reason on
this GPU-less host), the engine's profile shapes from each kind's own inputs, and a whole
embedding build with the fake builder (tests/trt) packing a tensorrt bundle with the kind's files.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from helpers import make_project
from modelkiln import api, cli
from modelkiln.artifacts.engine_key import HostFacts
from modelkiln.errors import BuildError
from modelkiln.graph.plans import plan_bundle
from modelkiln.stages import trt, trt_builder, trt_kinds
from tasks.task_specs import MEMORY_SPEC, TAGGER_SPEC, VISION_SPEC

NO_GPU = HostFacts(None, None, None, None, "linux-x86_64", "nvidia-smi not found")
H200 = HostFacts("9.0", "NVIDIA H200", "10.3.0", "cuda12", "linux-x86_64")
TRT = """\
  tensorrt:
    precision: fp16
    when: gpu-available
    profiles: {{batch: {{min: 1, opt: 4, max: 8}}, sequence: {{min: 1, opt: 16, max: 4096}}}}
"""
SKIP = "no GPU: nvidia-smi not found; backends.tensorrt.when is gpu-available"


@pytest.fixture(scope="module")
def vision_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelkiln import demo_fleet

    inputs = tmp_path_factory.mktemp("vision-trt-inputs")
    held_out = demo_fleet.make_vision_checkpoint(inputs / "checkpoint", steps=2)
    demo_fleet.write_label_files(inputs, demo_fleet.VISION_LABELS)
    demo_fleet.write_images(inputs / "images", held_out[:8], inputs / "calibration.jsonl")
    return inputs


@pytest.fixture(scope="module")
def tagger_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelkiln import demo_fleet

    inputs = tmp_path_factory.mktemp("tagger-trt-inputs")
    texts = demo_fleet.make_ner_checkpoint(inputs / "checkpoint", steps=20)
    demo_fleet.write_texts(inputs / "calibration.jsonl", texts[:12])
    (inputs / "label_order.json").write_text(json.dumps(list(demo_fleet.NER_LABELS)))
    (inputs / "registry_label_fields.json").write_text(json.dumps(
        {lab: {"entity": lab[2:] or "none"} for lab in demo_fleet.NER_LABELS}))
    return inputs


def _fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trt, "host_facts", lambda: H200)
    monkeypatch.setattr(trt, "select_builder", lambda host: trt_builder.FakeBuilder("10.3.0"))


def _plan_json(root: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, object]]:
    assert cli.main(["plan", "--json", str(root / "bundles")]) == 0
    rows = json.loads(capsys.readouterr().out)
    rows = rows["tasks"] if isinstance(rows, dict) else rows
    return {str(r["task"]): r for r in rows}


def _trt_params(root: Path, name: str) -> dict[str, object]:
    bundle = api.load_bundles([root / "bundles" / f"{name}.yaml"])[0]
    plan = next(p for p in plan_bundle(bundle) if p.stage == "trt")
    params: dict[str, object] = json.loads(plan.params)
    return params


def test_memory_plan_shows_engine_tasks_skipped(tmp_path: Path, memory_inputs: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(trt, "host_facts", lambda: NO_GPU)
    root = make_project(tmp_path / "p", memory_inputs, name="memory",
                        spec=MEMORY_SPEC + TRT).root
    rows = _plan_json(root, capsys)
    for task in ("trt:memory", "engines:memory", "trtparity:memory", "package:memory-tensorrt"):
        assert rows[task]["action"] == "skip", rows[task]
    assert rows["trt:memory"]["reasons"] == [SKIP]
    assert rows["engines:memory"]["reasons"] == ["trt:memory is skipped here"]
    assert rows["trtparity:memory"]["reasons"] == ["engines:memory is skipped here"]
    assert rows["package:memory-tensorrt"]["reasons"] == ["engines:memory is skipped here"]
    assert rows["package:memory-onnx"]["action"] == "run"
    bundle = api.load_bundles([root / "bundles" / "memory.yaml"])[0]
    assert bundle.embedding is not None
    cap = bundle.embedding.max_length
    assert 16 < cap < 4096  # the spec's sequence range is capped at the kind's max length
    inputs = _trt_params(root, "memory")["inputs"]
    assert inputs == {n: {"min": [1, 1], "opt": [4, 16], "max": [8, cap]}
                      for n in ("input_ids", "attention_mask", "token_type_ids")}
    gate = next(p for p in plan_bundle(bundle) if p.stage == "trtparity")
    assert gate.upstream == ("engines:memory",)
    assert json.loads(gate.params)["measure"] == "cosine"


def test_vision_plan_profiles_pixel_values(tmp_path: Path, vision_inputs: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(trt, "host_facts", lambda: NO_GPU)
    root = make_project(tmp_path / "v", vision_inputs, name="vision",
                        spec=VISION_SPEC + TRT).root
    rows = _plan_json(root, capsys)
    assert rows["trt:vision"]["action"] == "skip" and rows["trt:vision"]["reasons"] == [SKIP]
    assert rows["trtparity:vision"]["action"] == "skip"
    processor = json.loads((vision_inputs / "checkpoint" / "preprocessor_config.json").read_bytes())
    size = processor["size"]
    h, w = (size["height"], size["width"]) if isinstance(size, dict) else (size, size)
    params = _trt_params(root, "vision")
    assert params["inputs"] == {"pixel_values": {"min": [1, 3, h, w], "opt": [4, 3, h, w],
                                                 "max": [8, 3, h, w]}}
    bundle = api.load_bundles([root / "bundles" / "vision.yaml"])[0]
    plan = next(p for p in plan_bundle(bundle) if p.stage == "trt")
    assert plan.upstream == ("onnx:vision", "image_processor:vision")
    # the image processor's size is part of the engine's parameters: a new size, a new engine
    processor["size"] = {"height": h * 2, "width": w * 2}
    (root / "bundles" / "vision" / "checkpoint" / "preprocessor_config.json").write_text(
        json.dumps(processor))
    changed = _trt_params(root, "vision")["inputs"]
    assert changed == {"pixel_values": {"min": [1, 3, h * 2, w * 2], "opt": [4, 3, h * 2, w * 2],
                                        "max": [8, 3, h * 2, w * 2]}}


@pytest.mark.slow
def test_fake_engine_builds_a_memory_tensorrt_bundle(tmp_path: Path, memory_inputs: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake builder (tests/trt) on a pretend H200: the tensorrt bundle holds the onnx
    bundle's files plus the engine, and the gate reports cosine to the fp32 ONNX model."""
    monkeypatch.setattr(trt, "host_facts", lambda: H200)
    monkeypatch.setattr(trt, "select_builder", lambda host: trt_builder.FakeBuilder("10.3.0"))
    project = make_project(tmp_path / "p", memory_inputs, name="memory", spec=MEMORY_SPEC + TRT)
    assert api.build([project.root / "bundles"], ["build:memory"]) == 0
    manifest = json.loads((project.dist("tensorrt") / "manifest.json").read_bytes())
    onnx = json.loads((project.dist("onnx") / "manifest.json").read_bytes())
    paths = {f["path"] for f in manifest["files"]}
    assert {f["path"] for f in onnx["files"]} <= paths
    assert {"engines/sm90/model.plan", "engines/sm90/engine.json"} <= paths
    assert not any(p.startswith("parity/") for p in paths)
    key = manifest["parity"]["engines"]["engines"]["sm90"]["key"]
    assert key["builder"]["input_shapes"]["input_ids"]["opt"] == [4, 16]
    gate = manifest["parity"]["trtparity"]["engines"]["sm90"]
    assert gate["passed"] and gate["measure"] == "cosine" and gate["rows"] == 60
    assert 0.99 < gate["min_cosine"] <= 1.0 and gate["max_abs_diff"] > 0  # fp16 rounding
    assert "embed_parity" in manifest["parity"]
    with tarfile.open(project.dist("tensorrt") / "bundle.tar.gz") as tar:
        assert "engines/sm90/model.plan" in tar.getnames()
        tar.extractall(tmp_path / "u", filter="data")
    from modelkiln.runtime.engines import choose

    assert choose(tmp_path / "u", H200).path == tmp_path / "u" / "engines/sm90/model.plan"
    assert "no GPU" in choose(tmp_path / "u", NO_GPU).rejected["engines/sm90"]
    with tarfile.open(project.dist("tensorrt") / "bundle.tar.gz") as tar:
        card = tar.extractfile("model_card.md")
        assert card is not None
        assert "TensorRT engine sm90 vs fp32 ONNX on 60 calibration rows: cosine min" in \
            card.read().decode()


@pytest.mark.slow
def test_fake_engine_builds_tagger_and_vision_bundles(tmp_path: Path, tagger_inputs: Path,
                                                      vision_inputs: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A tagger's gate is token tag agreement on the real tokens; an image classifier's engine
    takes pixel_values and is gated on top-1 and decisions at its thresholds."""
    _fake_gpu(monkeypatch)
    tagger = make_project(tmp_path / "t", tagger_inputs, name="tagger", spec=TAGGER_SPEC + TRT)
    assert api.build([tagger.root / "bundles"], ["build:tagger"]) == 0
    manifest = json.loads((tagger.dist("tensorrt") / "manifest.json").read_bytes())
    gate = manifest["parity"]["trtparity"]["engines"]["sm90"]
    assert gate["passed"] and gate["measure"] == "token tag agreement" and gate["rows"] == 12
    from modelkiln import demo_fleet

    padded = gate["elements"] // len(demo_fleet.NER_LABELS)  # rows x padded length
    assert gate["tag_agreement"] > 0.9 and 0 < gate["tokens"] < padded  # padding left out
    paths = {f["path"] for f in manifest["files"]}
    assert {"label_order.json", "engines/sm90/model.plan"} <= paths

    vision = make_project(tmp_path / "v", vision_inputs, name="vision", spec=VISION_SPEC + TRT)
    assert api.build([vision.root / "bundles"], ["build:vision"]) == 0
    manifest = json.loads((vision.dist("tensorrt") / "manifest.json").read_bytes())
    gate = manifest["parity"]["trtparity"]["engines"]["sm90"]
    assert gate["passed"] and gate["rows"] == 8 and gate["top_label_agreement"] == 1.0
    key = manifest["parity"]["engines"]["engines"]["sm90"]["key"]
    assert list(key["builder"]["input_shapes"]) == ["pixel_values"]
    paths = {f["path"] for f in manifest["files"]}
    assert {"preprocessor_config.json", "thresholds.json", "engines/sm90/model.plan"} <= paths
    with tarfile.open(vision.dist("tensorrt") / "bundle.tar.gz") as tar:
        card = tar.extractfile("model_card.md")
        assert card is not None
        assert "TensorRT engine sm90 vs fp32 ONNX on 8 calibration rows: top-1 agreement " \
            "100.00%" in card.read().decode()


def test_kind_gate_fails_a_broken_engine(tmp_path: Path, memory_inputs: Path,
                                         tagger_inputs: Path) -> None:
    """The task's own measure fails an engine that is off, where rounding alone passes."""
    import numpy as np

    memory = make_project(tmp_path / "m", memory_inputs, name="memory", spec=MEMORY_SPEC + TRT)
    bundle = api.load_bundles([memory.root / "bundles" / "memory.yaml"])[0]
    ref = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    ok = trt_kinds.compare(bundle, ref, ref.astype(np.float16).astype(np.float32), None,
                           1e-2, 1e-2)
    assert ok["failures"] == {} and ok["min_cosine"] > 0.999
    broken = ref.copy()
    broken[2] = -broken[2]  # one row's vector flipped
    bad = trt_kinds.compare(bundle, ref, broken, None, 1e3, 0.0)  # elements gate wide open
    assert set(bad["failures"]) == {"cosine"} and bad["min_cosine"] < 0
    tagger = make_project(tmp_path / "t", tagger_inputs, name="tagger", spec=TAGGER_SPEC + TRT)
    tbundle = api.load_bundles([tagger.root / "bundles" / "tagger.yaml"])[0]
    logits = np.random.default_rng(1).normal(size=(2, 4, 5)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=bool)
    swapped = logits.copy()
    swapped[:, :, [0, 1]] = swapped[:, :, [1, 0]]  # labels out of order
    worse = trt_kinds.compare(tbundle, logits, swapped, mask, 1e3, 0.0)
    assert "tags" in worse["failures"] and worse["tokens"] == 5
    with pytest.raises(BuildError, match="shape"):
        trt_kinds.compare(tbundle, logits, logits[:1], mask, 1e3, 0.0)
