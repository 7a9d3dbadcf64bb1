"""A whole build with the fake builder on a pretend H200: engines in the tensorrt bundle with their
keys in engine.json and the manifest, the parity gate in manifest and model card, incremental
rules, multi-architecture merging, and the bootstrap's choice on other hosts."""
from __future__ import annotations

import dataclasses
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import make_project
from modelkiln import api
from modelkiln.artifacts.engine_key import HostFacts
from modelkiln.errors import BuildError
from modelkiln.runtime.engines import choose
from modelkiln.stages import trt
from trt.test_plan_trt import TRT_SPEC
from trt.trt_hosts import A100, H200, NO_GPU

pytestmark = pytest.mark.slow
Use = Callable[[HostFacts], None]


def _build(root: Path) -> None:
    assert api.build([root / "bundles"], ["build:tiny"]) == 0


def _ran(root: Path) -> set[str]:
    return {r.task for r in api.plan([root / "bundles"]) if r.run}


def _unpack(dist: Path, dest: Path) -> Path:
    with tarfile.open(dist / "bundle.tar.gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


def test_fake_engine_build(tmp_path: Path, tiny_inputs: Path, fake_host: Use,
                           fake_builder: Callable[[str], None]) -> None:
    fake_host(H200)
    fake_builder("10.3.0")
    project = make_project(tmp_path / "p", tiny_inputs,
                           spec=TRT_SPEC.replace("{when}", "gpu-available"))
    root = project.root
    _build(root)
    dist = project.dist("tensorrt")
    manifest = json.loads((dist / "manifest.json").read_bytes())
    paths = {f["path"] for f in manifest["files"]}
    assert {"engines/sm90/model.plan", "engines/sm90/engine.json",
            "registry_model_int8.onnx"} <= paths
    assert not any(p.startswith("parity/") for p in paths)  # parity logits stay in build/
    engine = manifest["parity"]["engines"]["engines"]["sm90"]
    key = engine["key"]
    assert (key["compute_capability"], key["tensorrt"], key["cuda"]) == ("9.0", "10.3.0", "cuda12")
    assert key["profiles"]["batch"] == {"min": 1, "opt": 4, "max": 8}
    assert key["onnx_files"] and key["device_name"] is None
    gate = manifest["parity"]["trtparity"]["engines"]["sm90"]
    assert gate["passed"] and gate["rows"] == 80 and gate["max_abs_logit_diff"] > 0  # fp16
    unpacked = _unpack(dist, tmp_path / "u")
    card = (unpacked / "model_card.md").read_text()
    assert "TensorRT engine sm90 vs fp32 ONNX on 80 calibration texts" in card
    timing = list((root / ".kiln" / trt.TIMING_DIR).iterdir())
    assert len(timing) == 1 and timing[0].name.startswith("sm90-trt10.3.0-cuda12-")

    # the bootstrap's choice on three hosts
    assert choose(unpacked, H200).path == unpacked / "engines/sm90/model.plan"
    other = choose(unpacked, A100)
    assert other.path is None and "built for sm90, this GPU is sm80" in \
        other.rejected["engines/sm90"]
    assert "no GPU" in choose(unpacked, NO_GPU).rejected["engines/sm90"]
    newer = dataclasses.replace(H200, tensorrt="10.4.0")
    assert "built with TensorRT 10.3.0, this host has 10.4.0" in \
        choose(unpacked, newer).rejected["engines/sm90"]

    # incremental: thresholds never rebuild the engine; profiles do
    assert _ran(root) == set()
    project.edit("default: 0.5", "default: 0.4")
    ran = _ran(root)
    assert "trt:tiny" not in ran and {"trtparity:tiny", "package:tiny-tensorrt"} <= ran
    _build(root)
    project.edit("opt: 4,", "opt: 2,")
    assert {"trt:tiny", "trtparity:tiny", "package:tiny-tensorrt"} <= _ran(root)
    assert "onnx:tiny" not in _ran(root)
    _build(root)

    # a second runner with another GPU: its engine merges in beside the first
    sm90_out = tmp_path / "sm90-trt"
    shutil.copytree(root / "build" / "tiny" / "trt", sm90_out)
    fake_host(A100)
    _build(root)
    sm80_out = root / "build" / "tiny" / "trt"
    merged = tmp_path / "merged"
    sides = trt.merge([sm80_out, sm90_out, sm80_out], merged)
    assert [s["plan"] for s in sides] == ["engines/sm80/model.plan", "engines/sm90/model.plan"]
    assert choose(merged, A100).path == merged / "engines/sm80/model.plan"
    assert choose(merged, H200).path == merged / "engines/sm90/model.plan"


def test_merge_refuses_mixed_families_and_two_engines_for_one_gpu(tmp_path: Path) -> None:
    from modelkiln.artifacts import engine_key as ek
    from trt.test_engine_key import key

    def engine_set(name: str, **changes: object) -> Path:
        k = key(**changes)
        d = tmp_path / name / "engines" / f"sm{k['compute_capability'].replace('.', '')}"
        d.mkdir(parents=True)
        (d / "model.plan").write_bytes(name.encode())
        (d / "engine.json").write_bytes(ek.dumps(ek.sidecar(
            k, f"engines/{d.name}/model.plan", 1, "0" * 64)))
        return tmp_path / name

    a = engine_set("a")
    with pytest.raises(BuildError, match="different models or settings"):
        trt.merge([a, engine_set("b", compute_capability="8.0", onnx_sha256="f" * 64)],
                  tmp_path / "m1")
    with pytest.raises(BuildError, match="two different engines for sm90"):
        trt.merge([a, engine_set("c", tensorrt="10.4.0")], tmp_path / "m2")
