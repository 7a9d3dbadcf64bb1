"""`quantize: auto`: the int8 stage's search over a fixed list of settings (issue 20 item 2).

Real builds of tiny seeded BERTs (tests/stages/int8_models.py doctors them so that int8 fails
in a known way whatever the CPU): one where the old default flips decisions and auto keeps a
setting that passes, one where nothing passes and the build says what to write; the choice is
the same when the search runs again, and a rebuild after it runs nothing. The ranking and the
spec's spelling are checked without a model.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from helpers import LABELS, SPEC, Project, make_inputs, make_project
from modelkiln.stages import int8_auto
from stages import int8_models

AUTO_SPEC = SPEC + """\
  onnx:
    parity: {{max_decision_flip_rate: 0.05}}
"""


def _inputs(directory: Path, doctor: str) -> Path:
    from modelkiln import demo

    held_out = demo.make_checkpoint(directory / "checkpoint", LABELS, seed=1, hidden=64,
                                    layers=2, steps=150, rows=300)
    demo.write_label_files(directory, LABELS)
    demo.write_jsonl(directory / "calibration.jsonl", held_out[:120])
    getattr(int8_models, doctor)(directory / "checkpoint")
    return directory


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_CACHE_URI", "off")  # every search here really runs


@pytest.fixture(scope="module")
def auto_built(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A project whose word-embedding table has one outlier row, built with quantize: auto."""
    mp = pytest.MonkeyPatch()
    mp.setenv("KILN_CACHE_URI", "off")
    try:
        inputs = _inputs(tmp_path_factory.mktemp("auto-inputs"), "outlier_embedding")
        project = make_project(tmp_path_factory.mktemp("auto-proj"), inputs, spec=AUTO_SPEC)
        run = project.doit("build:tiny")
        assert run.code == 0, run.output
    finally:
        mp.undo()
    return project


def _stamp(project: Project, stage: str) -> dict[str, Any]:
    stamp: dict[str, Any] = json.loads(
        (project.root / "build" / "tiny" / ".stamps" / f"{stage}.json").read_text())
    return stamp


def _int8_digest(project: Project) -> str:
    model = project.root / "build" / "tiny" / "int8" / "registry_model_int8.onnx"
    return hashlib.sha256(model.read_bytes()).hexdigest()


@pytest.mark.slow
def test_auto_keeps_a_passing_setting_where_the_default_fails(auto_built: Project) -> None:
    auto = _stamp(auto_built, "int8")["report"]["auto"]
    by_name = {c["name"]: c for c in auto["candidates"]}
    assert auto["candidates"][0]["name"] == "default" and by_name["default"]["passed"] is False
    assert by_name["default"]["decision_flip_rate"] > 0.05  # the old default: int8 garbles it
    chosen = by_name[auto["chosen"]]
    assert chosen["passed"] is True and chosen.get("chosen") is True
    # what passes keeps the embedding table in float: MatMul only, or it among the float nodes
    assert chosen["settings"]["op_types"] == ["MatMul"] or any(
        "word_embeddings" in n for n in chosen["settings"]["exclude_nodes"])
    # the smallest passing one (within 1% of fp32 size), by the recorded sizes
    passing = [c for c in auto["candidates"] if c.get("passed")]
    fp32 = _stamp(auto_built, "int8")["report"]["fp32_bytes"]
    assert chosen["bytes"] <= min(c["bytes"] for c in passing) + 0.01 * fp32
    # the parity gate measured the kept model exactly as the search did
    parity = json.loads((auto_built.root / "build" / "tiny" / "parity" / "parity.json").read_text())
    assert parity["int8"]["decision_flip_rate"] == chosen["decision_flip_rate"]
    assert parity["quantize"]["chosen"] == auto["chosen"]
    # and every candidate's figures ship in the manifest and the card
    dist = next((auto_built.root / "dist" / "tiny").glob("*/onnx"))
    manifest = json.loads((dist / "manifest.json").read_text())
    assert [c["name"] for c in manifest["parity"]["quantize"]["candidates"]] == list(by_name)
    import tarfile

    with tarfile.open(dist / "bundle.tar.gz") as tar:
        member = tar.extractfile("model_card.md")
        assert member is not None
        card = member.read().decode()
    assert f"chosen by `quantize: auto` on {auto['cpu_class']}: {auto['chosen']}" in card
    assert "  - default: " in card and ", fail" in card and "(kept)" in card


@pytest.mark.slow
def test_a_rebuild_after_auto_is_a_noop(auto_built: Project, tmp_path: Path) -> None:
    copy = tmp_path / "proj"
    shutil.copytree(auto_built.root, copy, symlinks=True, copy_function=shutil.copy2)
    project = Project(copy, auto_built.name)
    run = project.doit("build:tiny")
    assert run.code == 0 and run.executed == set(), run.output
    # a thresholds edit reruns the search (its measure is at the shipped thresholds), never the
    # export; the memo's logits make it arithmetic: at most the new pick is quantized
    project.edit("  strategy: f1-optimal\n", "  strategy: fixed\n")
    run = project.doit("build:tiny")
    assert run.code == 0, run.output
    assert "onnx:tiny" not in run.executed, run.output
    assert {"thresholds:tiny", "int8:tiny"} <= run.executed, run.output
    assert run.output.count("int8:tiny: quantizing ") <= 1, run.output
    assert "int8:tiny: candidate default: " in run.output  # every candidate scored again


@pytest.mark.slow
def test_the_choice_is_the_same_when_the_search_runs_again(auto_built: Project,
                                                            tmp_path: Path) -> None:
    copy = tmp_path / "proj"
    shutil.copytree(auto_built.root, copy, symlinks=True, copy_function=shutil.copy2)
    project = Project(copy, auto_built.name)
    first = _stamp(project, "int8")["report"]["auto"]
    digest = _int8_digest(project)
    run = project.doit("--always-execute", "int8:tiny")
    assert run.code == 0 and "int8:tiny" in run.executed, run.output
    again = _stamp(project, "int8")["report"]["auto"]
    assert again == first  # same pick, same settings, same figures for every candidate
    assert _int8_digest(project) == digest
    run = project.doit("build:tiny")  # identical bytes: nothing downstream reruns
    assert run.code == 0 and run.executed == set(), run.output


@pytest.mark.slow
def test_when_nothing_passes_the_build_fails_with_what_to_write(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "inputs", "outlier_inputs")
    project = make_project(tmp_path / "proj", inputs, spec=AUTO_SPEC)
    done = project.kiln("build")
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert "Traceback" not in out
    assert "quantize: auto tried 6 int8 settings" in out  # keep-head: the head is a Gemm
    assert "none keeps decision flips within 5.00%" in out
    for name in ("default", "reduce-range", "per-tensor", "matmul-only", "keep-drifting",
                 "static"):
        assert f"{name} " in out.split("(flip rates: ", 1)[1]
    assert "To ship it anyway, pin it and accept its figure: backends.onnx.quantize: {mode: " in out
    assert "backends.onnx.parity.max_decision_flip_rate: 0." in out
    record = json.loads((project.root / "build" / "tiny" / "int8.failed" /
                         "quantize_auto.json").read_text())
    assert not any(c.get("passed") for c in record["candidates"])
    assert not (project.root / "dist").exists() or not list((project.root / "dist").rglob(
        "onnx/manifest.json"))


# --- without a model ------------------------------------------------------------------------

def _rec(name: str, size: int, rate: float | None, limit: float = 0.01) -> dict[str, Any]:
    if rate is None:
        return {"name": name, "skipped": "same settings as default"}
    return {"name": name, "bytes": size, "decision_flip_rate": rate, "passed": rate <= limit,
            "top_label_agreement": 1 - rate}


def test_the_smallest_passing_candidate_is_kept_and_list_order_breaks_near_ties() -> None:
    fp32 = 1000
    results = [_rec("default", 300, 0.02), _rec("reduce-range", 305, 0.005),
               _rec("per-tensor", 299, 0.009), _rec("keep-head", 0, None),
               _rec("matmul-only", 600, 0.0)]
    # per-tensor is 6 bytes smaller than reduce-range, under 1% of fp32: the earlier one wins
    assert int8_auto.choose(results, fp32) == 1
    assert int8_auto.choose(results, 100) == 2  # with a small fp32, 6 bytes is more than 1%
    assert int8_auto.choose([_rec("default", 300, 0.5)], fp32) is None
    assert int8_auto.choose([_rec("default", 300, 0.01)], fp32) == 0  # the limit is inclusive


def test_the_failure_names_every_figure_and_the_setting_to_write() -> None:
    from modelkiln.model.bundle import Quantize

    best = Quantize("dynamic", "int8", True, True, None, None, ("/classifier/MatMul",))
    results = [_rec("default", 300, 0.20), _rec("keep-head", 310, 0.031),
               _rec("per-tensor", 0, None)]
    text = int8_auto.failure(results, 0.01, "x86_64 avx2, no VNNI", best)
    assert "tried 2 int8 settings on x86_64 avx2, no VNNI" in text
    assert "(flip rates: default 20.00%, keep-head 3.10%)" in text
    assert "the best is keep-head at 3.10%" in text
    assert ("backends.onnx.quantize: {mode: dynamic, weight_type: int8, per_channel: true, "
            "reduce_range: true, exclude_nodes: ['/classifier/MatMul']}") in text
    assert "backends.onnx.parity.max_decision_flip_rate: 0.031" in text


def test_auto_is_the_default_and_explicit_settings_plan_as_before(tmp_path: Path) -> None:
    from modelkiln.api import load_bundles
    from modelkiln.paths import Layout
    from modelkiln.stages import int8

    inputs = tmp_path / "inputs"
    make_inputs(inputs)
    project = make_project(tmp_path / "proj", inputs)
    spec, base = project.spec, SPEC.format(name="tiny")

    def plan(onnx: str) -> tuple[str, tuple[str, ...], str]:
        spec.write_text(base + onnx)
        try:
            bundle = load_bundles([spec])[0]
        except Exception as exc:  # a spec error: the message is the answer
            return "error", (), str(exc)
        assert bundle.onnx is not None
        p = int8.plan(bundle, Layout(project.root))[0]
        return bundle.onnx.quantize.mode, p.upstream, p.params

    mode, upstream, params = plan("  onnx: {}\n")
    assert mode == "auto" and "thresholds:tiny" in upstream and '"mode":"auto"' in params
    # other task kinds have no decisions at thresholds to search on: the old default
    from dataclasses import replace

    bundle = load_bundles([spec])[0]
    other = replace(bundle, source=replace(bundle.source, task="feature-extraction"))
    assert int8.settings(other).mode == "dynamic" and int8.settings(other).per_channel
    assert int8.plan(other, Layout(project.root))[0].upstream == ("onnx:tiny",)
    assert plan("  onnx:\n    quantize: auto\n")[:2] == (mode, upstream)
    mode, upstream, params = plan("  onnx:\n    quantize: {mode: dynamic}\n")
    assert mode == "dynamic" and upstream == ("onnx:tiny",)
    assert "exclude_nodes" not in params  # explicit specs keep their plan (and cache) as before
    assert "exclude_nodes" in plan("  onnx:\n    quantize: {exclude_nodes: [a]}\n")[2]
    mode, _, message = plan("  onnx:\n    quantize: fast\n")
    assert mode == "error" and "backends.onnx.quantize" in message and "auto" in message


def test_a_damaged_memo_entry_is_a_miss(tmp_path: Path) -> None:
    import numpy as np

    from modelkiln.stages.int8_search import _Memo

    memo = _Memo(tmp_path / "memo")
    assert memo.load("cand-a.npy") is None and memo.load("cand-a.json") is None
    memo.save("cand-a.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    memo.save("cand-a.json", 1234)
    loaded = memo.load("cand-a.npy")
    assert loaded is not None
    assert loaded.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert memo.load("cand-a.json") == 1234
    whole = (tmp_path / "memo" / "cand-a.npy").read_bytes()
    (tmp_path / "memo" / "cand-a.npy").write_bytes(whole[:-5])  # cut short
    assert memo.load("cand-a.npy") is None
    (tmp_path / "memo" / "cand-a.npy").write_bytes(b"not an array")
    assert memo.load("cand-a.npy") is None
    (tmp_path / "memo" / "cand-a.json").write_bytes(b"{")
    assert memo.load("cand-a.json") is None
    assert memo.key(a=1, b=[2]) == memo.key(b=[2], a=1) != memo.key(a=1, b=[3])
