"""trt in the plan: skipped with its reason without a GPU, planned with one, refused when required;
what the cache key and the doit graph see. Fake host facts; no build needed."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import SPEC, make_project
from modelkiln import api, cli
from modelkiln.artifacts.digest import stat_cache
from modelkiln.artifacts.engine_key import HostFacts
from modelkiln.errors import BuildError
from modelkiln.graph import cachekey, tasks
from modelkiln.graph.plans import plan_bundle
from modelkiln.paths import Layout
from modelkiln.stages import trt
from modelkiln.stages.base import RunContext
from trt.trt_hosts import A100, H200, NO_GPU

TRT_SPEC = SPEC + """\
  onnx:
    opset: 17
    parity: {{atol: 1.0e-3, max_decision_flip_rate: 1.0}}  # the tiny model: int8 is not under test
  tensorrt:
    precision: fp16
    when: {when}
    profiles: {{batch: {{min: 1, opt: 4, max: 8}}, sequence: {{min: 1, opt: 64, max: 128}}}}
    parity: {{max_decision_flip_rate: 0.25}}  # the tiny model packs its scores near the cuts
"""

Use = Callable[[HostFacts], None]


def _project(tmp_path: Path, tiny_inputs: Path, when: str = "gpu-available") -> Path:
    spec = TRT_SPEC.replace("{when}", when)
    return make_project(tmp_path / "p", tiny_inputs, spec=spec).root


def _rows(root: Path) -> dict[str, api.PlanRow]:
    return {r.task: r for r in api.plan([root / "bundles"])}


def test_no_gpu_skips_trt_and_what_reads_it(tmp_path: Path, tiny_inputs: Path,
                                             fake_host: Use, capsys: pytest.CaptureFixture[str]) -> None:
    root = _project(tmp_path, tiny_inputs)
    fake_host(NO_GPU)
    rows = _rows(root)
    assert rows["trt:tiny"].action == "skip" and not rows["trt:tiny"].run
    assert rows["trt:tiny"].reasons == ("no GPU: nvidia-smi not found; backends.tensorrt.when "
                                        "is gpu-available",)
    assert rows["engines:tiny"].reasons == ("trt:tiny is skipped here",)
    assert rows["trtparity:tiny"].reasons == ("engines:tiny is skipped here",)
    assert rows["package:tiny-tensorrt"].action == "skip"
    assert rows["package:tiny-onnx"].action == "run" and rows["onnx:tiny"].action == "run"
    assert cli.main(["plan", str(root / "bundles")]) == 0
    out = capsys.readouterr().out
    assert "skip trt:tiny (no GPU: nvidia-smi not found; backends.tensorrt.when is " \
           "gpu-available)" in out
    # nothing of the tensorrt bundle becomes a doit task, and `build:` does not wait for it
    bundle = api.load_bundles([root / "bundles" / "tiny.yaml"])[0]
    groups = tasks.task_dicts([bundle])
    assert "trt" not in groups and "trtparity" not in groups
    assert groups["build"][0]["task_dep"] == ["package:tiny-pytorch", "package:tiny-onnx"]
    assert api.built_here(bundle) == ("pytorch", "onnx")


def test_with_a_gpu_trt_is_planned_and_keyed_by_platform(tmp_path: Path, tiny_inputs: Path,
                                                         fake_host: Use) -> None:
    root = _project(tmp_path, tiny_inputs)
    fake_host(H200)
    rows = _rows(root)
    assert rows["trt:tiny"].action == "run" and rows["package:tiny-tensorrt"].action == "run"
    bundle = api.load_bundles([root / "bundles" / "tiny.yaml"])[0]
    plan = next(p for p in plan_bundle(bundle) if p.stage == "trt")
    assert plan.upstream == ("onnx:tiny", "tokenizer:tiny")  # thresholds are not an input
    h200 = cachekey.material(plan, {}, {})
    assert h200["platform"] == "sm90-trt10.3.0-cuda12"
    assert "tensorrt" not in h200["tools"]  # the TensorRT version is in the platform class
    fake_host(A100)
    plan80 = next(p for p in plan_bundle(bundle) if p.stage == "trt")
    a100 = cachekey.material(plan80, {}, {})
    assert a100["platform"] == "sm80-trt10.3.0-cuda12"
    assert cachekey.action_key(a100) != cachekey.action_key(h200)
    assert plan80.params_digest != plan.params_digest  # a stamp from another GPU is stale


def test_required_without_gpu_is_planned_and_fails_clearly(tmp_path: Path, tiny_inputs: Path,
                                                           fake_host: Use) -> None:
    root = _project(tmp_path, tiny_inputs, when="required")
    fake_host(NO_GPU)
    assert _rows(root)["trt:tiny"].action == "run"  # not skipped: the build must fail
    bundle = api.load_bundles([root / "bundles" / "tiny.yaml"])[0]
    plan = next(p for p in plan_bundle(bundle) if p.stage == "trt")
    layout = Layout(root)
    ctx = RunContext(plan=plan, bundle=bundle, layout=layout, out=tmp_path / "out", upstream={},
                     cache=stat_cache(layout.state), log=lambda _m: None)
    with pytest.raises(BuildError, match=r"when is required and this host cannot build an engine "
                                         r"\(no GPU: nvidia-smi not found\)"):
        trt.run(ctx)


def test_when_never_plans_nothing(tmp_path: Path, tiny_inputs: Path, fake_host: Use) -> None:
    root = _project(tmp_path, tiny_inputs, when="never")
    fake_host(H200)
    assert not any(t.startswith(("trt", "package:tiny-tensorrt")) for t in _rows(root))


@pytest.mark.parametrize("edit,problem", [
    ("precision: fp16", "backends.tensorrt.precision: int8 engines are built from a static Q/DQ"),
    ("max: 128}}", "backends.tensorrt.profiles.sequence: the longest sequence, 100"),
    ("opt: 4,", "backends.tensorrt.profiles.batch: batch range min 1, opt 40, max 8"),
])
def test_spec_checks(tmp_path: Path, tiny_inputs: Path, edit: str, problem: str) -> None:
    new = {"precision: fp16": "precision: int8", "max: 128}}": "max: 100}}",
           "opt: 4,": "opt: 40,"}[edit]
    root = _project(tmp_path, tiny_inputs)
    spec = root / "bundles" / "tiny.yaml"
    spec.write_text(spec.read_text().replace(edit, new, 1).replace(
        "thresholds:\n", "thresholds:\n  max_length: 128\n", 1))
    with pytest.raises(Exception, match=problem.replace("(", r"\(")):
        api.load_bundles([spec])
