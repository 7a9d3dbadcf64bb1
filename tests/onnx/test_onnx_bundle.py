"""The production ONNX bundle end to end on a real tiny model: export, int8, gates, smoke, package,
and exactly which tasks rerun when one part of the spec changes."""
from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import onnx_reference
from helpers import Project, member_bytes

pytestmark = pytest.mark.slow

ONNX_TASKS = {"onnx:tiny", "int8:tiny", "parity:tiny", "smoke:tiny", "package:tiny-onnx"}
ALL = {"weights:tiny", "tokenizer:tiny", "labels:tiny", "thresholds:tiny",
       "package:tiny-pytorch"} | ONNX_TASKS


def would_run(project: Project, *args: str) -> set[str]:
    done = project.kiln("plan", "--json", *args)
    assert done.returncode in (0, 6), done.stderr
    return {row["task"] for row in json.loads(done.stdout) if row["run"]}


def stamp(project: Project, stage: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(
        (project.root / "build/tiny/.stamps" / f"{stage}.json").read_text())
    return record


def test_onnx_bundle_contents_and_manifest(onnx_built: Project) -> None:
    dist = onnx_built.dist("onnx")
    with tarfile.open(dist / "bundle.tar.gz") as tar:
        names = set(tar.getnames())
        model = member_bytes(tar, "registry_model_int8.onnx")
    assert {"registry_model_int8.onnx", "config.json", "model.safetensors", "thresholds.json",
            "label_order.json", "registry_label_fields.json", "tokenizer/tokenizer.json",
            "manifest.json"} <= names
    manifest = json.loads((dist / "manifest.json").read_text())
    files = {f["path"]: f for f in manifest["files"]}
    int8_path = onnx_built.root / "build/tiny/int8/registry_model_int8.onnx"
    assert files["registry_model_int8.onnx"]["size"] == len(model) == int8_path.stat().st_size
    parity, smoke = manifest["parity"], manifest["parity"]["smoke"]  # gate figures, checks beside them
    assert parity["passed"] is True and parity["gates"] == {"fp32": "pass", "int8": "pass"}
    assert parity["rows"] == 120 and set(parity["per_label"]) == {"alpha", "beta", "gamma",
                                                                  "delta"}
    assert parity["fp32"]["max_abs_logit_diff"] <= 1e-4
    assert smoke["output_shape"] == [2, 4]
    assert "registry_model_int8.onnx" in smoke["files"] and "config.json" not in smoke["files"]
    assert manifest["tools"]["onnxruntime"] == "1.31.1"
    # the pytorch bundle does not carry the ONNX model
    with tarfile.open(onnx_built.dist("pytorch") / "bundle.tar.gz") as tar:
        assert "registry_model_int8.onnx" not in tar.getnames()


def test_export_has_dynamic_axes_and_the_recommended_opset(onnx_built: Project) -> None:
    """No opset in the spec: the exporter's recommended one (18 for BERT), and no warning that the
    export is below it (opset 17 used to be the default, and optimum warned on every build)."""
    import onnx

    model = onnx.load(str(onnx_built.root / "build/tiny/onnx/model.onnx"))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert stamp(onnx_built, "onnx")["report"]["opset"] == 18
    assert "recommended minimum opset" not in (onnx_built.root / "first-build.log").read_text()
    for tensor in model.graph.input:
        dims = [d.dim_param for d in tensor.type.tensor_type.shape.dim]
        assert dims == ["batch_size", "sequence_length"], tensor.name
    report = stamp(onnx_built, "int8")["report"]
    assert report["mode"] == "dynamic" and report["bytes"] < report["fp32_bytes"] / 2
    assert "MatMulInteger" in report["ops"] or "DynamicQuantizeMatMul" in report["ops"]


def test_parity_figures_match_an_independent_recomputation(onnx_built: Project) -> None:
    """Recompute PyTorch vs int8 decisions without the stage code, and compare."""
    labels, ref, q, cuts = onnx_reference.scores(onnx_built.root)
    flips = (ref >= cuts) != (q >= cuts)
    report = json.loads((onnx_built.root / "build/tiny/parity/parity.json").read_text())
    assert report["int8"]["decision_flips"] == int(flips.sum())
    assert [report["per_label"][lab]["flips"] for lab in labels] == flips.sum(0).tolist()
    worst = max(report["per_label"][lab]["int8_max_abs_score_diff"] for lab in labels)
    assert worst == pytest.approx(float(np.abs(q - ref).max()), rel=1e-3)
    assert worst > 0  # int8 did move the scores: the comparison is not vacuous
    md = (onnx_built.root / "build/tiny/parity/parity.md").read_text()
    assert md.startswith("# Parity (120 calibration rows")


def test_second_build_runs_nothing(onnx_built: Project) -> None:
    again = onnx_built.doit("build:tiny")
    assert again.code == 0 and again.executed == set() and again.fresh == ALL, again.output


def test_changing_thresholds_does_not_reexport_or_requantize(project_copy: Project) -> None:
    project_copy.edit("default: 0.5", "default: 0.4")
    assert would_run(project_copy) == {"thresholds:tiny", "parity:tiny", "smoke:tiny",
                                       "package:tiny-pytorch", "package:tiny-onnx"}


def test_changing_parity_limits_reruns_only_the_gate_and_packaging(project_copy: Project) -> None:
    project_copy.edit("max_decision_flip_rate: 0.1", "max_decision_flip_rate: 0.2")
    assert would_run(project_copy) == {"parity:tiny", "package:tiny-onnx"}


def test_changing_quantization_does_not_reexport(project_copy: Project) -> None:
    project_copy.edit("per_channel: true", "per_channel: false")
    expected = {"int8:tiny", "parity:tiny", "smoke:tiny", "package:tiny-onnx"}
    assert would_run(project_copy) == expected
    before = stamp(project_copy, "onnx")
    run = project_copy.doit("build:tiny")
    assert run.code == 0 and run.executed == expected, run.output
    assert stamp(project_copy, "onnx") == before
    assert stamp(project_copy, "int8")["report"]["per_channel"] is False


def test_changing_the_opset_reexports_and_everything_after_it(project_copy: Project) -> None:
    import onnx

    project_copy.edit("  onnx:\n", "  onnx:\n    opset: 17\n")  # an explicit opset is honoured
    expected = {"onnx:tiny", "int8:tiny", "parity:tiny", "smoke:tiny", "package:tiny-onnx"}
    assert would_run(project_copy) == expected
    run = project_copy.doit("build:tiny")
    assert run.code == 0 and run.executed == expected, run.output
    model = onnx.load(str(project_copy.root / "build/tiny/onnx/model.onnx"))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]


def test_skipping_onnx(project_copy: Project) -> None:
    project_copy.edit("default: 0.5", "default: 0.4")
    assert would_run(project_copy, "--skip", "onnx") == {"thresholds:tiny", "package:tiny-pytorch"}
    run = project_copy.doit("build:tiny", "skip=onnx")
    assert run.code == 0 and run.executed == {"thresholds:tiny", "package:tiny-pytorch"}, run.output
    project_copy.edit("  onnx:\n", "  onnx:\n    enabled: false\n")
    tasks = {row["task"] for row in json.loads(project_copy.kiln("plan", "--json").stdout)}
    assert tasks == {"weights:tiny", "tokenizer:tiny", "labels:tiny", "thresholds:tiny",
                     "package:tiny-pytorch"}


def test_smoke_check_runs_on_the_unpacked_tarball(onnx_built: Project, tmp_path: Path) -> None:
    from modelkiln.errors import BuildError
    from modelkiln.stages.smoke import check_view

    with tarfile.open(onnx_built.dist("onnx") / "bundle.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    report = check_view(tmp_path, "multi-label-classification", 128)
    assert report["output_shape"] == [2, 4] and report["labels"] == ["alpha", "beta", "gamma",
                                                                     "delta"]
    cuts = json.loads((tmp_path / "thresholds.json").read_text())
    del cuts["gamma"]
    (tmp_path / "thresholds.json").write_text(json.dumps(cuts))
    with pytest.raises(BuildError, match="differ from label_order"):
        check_view(tmp_path, "multi-label-classification", 128)


def test_external_data_export_round_trip(project_copy: Project) -> None:
    """A model saved with external data (as the exporter does past 2 GB) builds and ships.

    optimum's FORCE_ONNX_EXTERNAL_DATA=1 makes the exporter take its >2 GB path on a tiny model.
    """
    (project_copy.root / "build/tiny/.stamps/onnx.json").unlink()
    # and the project's action cache, which would restore the export instead of running it
    shutil.rmtree(project_copy.root / ".kiln" / "cache", ignore_errors=True)
    os.environ["FORCE_ONNX_EXTERNAL_DATA"] = "1"
    try:
        run = project_copy.doit("onnx:tiny", "int8:tiny", "parity:tiny")
    finally:
        del os.environ["FORCE_ONNX_EXTERNAL_DATA"]
    assert run.code == 0, run.output
    out = project_copy.root / "build/tiny/onnx"
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx_data"]
    assert stamp(project_copy, "onnx")["report"]["external_data"] == ["model.onnx_data"]
    assert (out / "model.onnx").stat().st_size < 100_000 < (out / "model.onnx_data").stat().st_size
    assert stamp(project_copy, "parity")["report"]["passed"] is True
