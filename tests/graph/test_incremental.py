"""The build graph's promises, checked by running the real `doit` on a real tiny model.

One project is built once per module; each test then changes one thing and checks exactly which
tasks rerun. Tests run in file order and restore what they change.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import BIN, Project, make_project, member_bytes

pytestmark = pytest.mark.slow

ALL = {"weights:tiny", "tokenizer:tiny", "labels:tiny", "thresholds:tiny", "package:tiny-pytorch"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_inputs: Path) -> Project:
    project = make_project(tmp_path_factory.mktemp("proj"), tiny_inputs)
    first = project.doit("build:tiny")
    assert first.code == 0, first.output
    assert first.executed == ALL
    return project


def test_second_run_executes_nothing(built: Project) -> None:
    time.sleep(0.2)  # past the racy window of the build's last writes
    again = built.doit("build:tiny")
    assert again.code == 0, again.output
    assert again.executed == set()
    assert again.fresh == ALL
    # that full check recorded the bundle's verdict: the runs below (each edit) go through it
    verdicts = json.loads((built.root / ".kiln" / "verdicts.json").read_text())
    assert "tiny" in verdicts["bundles"]
    assert built.doit("build:tiny").executed == set()


def test_bundle_layout_and_manifest(built: Project) -> None:
    import tarfile

    dist = built.dist()
    with tarfile.open(dist / "bundle.tar.gz") as tar:
        names = set(tar.getnames())
        inner = json.loads(member_bytes(tar, "manifest.json"))
    assert {"config.json", "model.safetensors", "tokenizer/tokenizer.json", "thresholds.json", "model_card.md",
            "label_order.json", "registry_label_fields.json", "manifest.json"} <= names
    published = json.loads((dist / "manifest.json").read_text())
    assert published["archive"]["sha256"] != inner["aggregate_sha256"]
    assert {k: v for k, v in published.items() if k != "archive"} == inner
    assert inner["name"] == "tiny" and inner["version"] == "1.0.0" and inner["backend"] == "pytorch"
    assert {f["path"] for f in inner["files"]} == names - {"manifest.json", "tokenizer"}
    assert any(k.endswith("checkpoint/model.safetensors") for k in inner["inputs"])
    assert inner["tools"]["torch"].startswith("2.13")


def test_touching_the_checkpoint_reruns_nothing(built: Project) -> None:
    weights = built.inputs / "checkpoint" / "model.safetensors"
    os.utime(weights)  # like `touch`: new mtime, same bytes
    run = built.doit("build:tiny")
    assert run.executed == set(), run.output
    cache = json.loads((built.root / ".kiln" / "hashcache.json").read_text())
    # the touched file was re-hashed once and its new stat remembered: the next run reads nothing
    st = weights.stat()
    assert cache["entries"][f"{st.st_dev}:{st.st_ino}"][:2] == [st.st_size, st.st_mtime_ns]


def test_editing_default_threshold_reruns_thresholds_and_package_only(built: Project) -> None:
    built.edit("default: 0.5", "default: 0.45")
    try:
        run = built.doit("build:tiny")
        assert run.executed == {"thresholds:tiny", "package:tiny-pytorch"}, run.output
    finally:
        built.edit("default: 0.45", "default: 0.5")
    assert built.doit("build:tiny").executed == {"thresholds:tiny", "package:tiny-pytorch"}


def test_changing_one_weight_reruns_everything_downstream(built: Project) -> None:
    from safetensors.torch import load_file, save_file

    path = built.inputs / "checkpoint" / "model.safetensors"
    original = path.read_bytes()
    tensors = load_file(str(path))
    key = sorted(k for k in tensors if k.endswith("classifier.weight"))[0]
    tensors[key][0, 0] += 1.0
    save_file(tensors, str(path), metadata={"format": "pt"})
    try:
        plan = built.kiln("plan", "--json")
        rows = {r["task"]: r for r in json.loads(plan.stdout)}
        assert rows["weights:tiny"]["run"] and not rows["tokenizer:tiny"]["run"]
        assert any("checkpoint/model.safetensors changed" in r for r in rows["weights:tiny"]["reasons"])
        run = built.doit("build:tiny")
        assert run.executed == ALL - {"tokenizer:tiny"}, run.output
    finally:
        path.write_bytes(original)
    built.doit("build:tiny")


def test_corrupt_output_is_rebuilt_not_trusted(built: Project) -> None:
    out = built.root / "build" / "tiny" / "weights" / "model.safetensors"
    with open(out, "r+b") as f:
        f.truncate(out.stat().st_size // 2)
    plan = built.kiln("plan")
    assert "output build/tiny/weights/model.safetensors is corrupt" in plan.stdout
    run = built.doit("build:tiny")
    # rebuilt bytes are identical, so nothing downstream has to follow (early cutoff)
    assert run.executed == {"weights:tiny"}, run.output


def test_plan_check_exit_code_and_reasons(built: Project) -> None:
    clean = built.kiln("plan", "--check")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 of 5 tasks would run" in clean.stdout
    built.edit("default: 0.5", "default: 0.55")
    try:
        dirty = built.kiln("plan", "--check")
        assert dirty.returncode == 6
        assert "run  thresholds:tiny" in dirty.stdout
        assert "spec changed: thresholds" in dirty.stdout
        assert "upstream thresholds:tiny will run" in dirty.stdout
        assert "ok   weights:tiny" in dirty.stdout
    finally:
        built.edit("default: 0.55", "default: 0.5")


def test_doit_list_shows_one_line_docs(built: Project) -> None:
    run = built.doit("list", "--all")
    assert run.code == 0
    assert "weights:tiny" in run.output and "convert tiny's checkpoint to safetensors" in run.output
    assert "build:tiny" in run.output


def test_killed_build_resumes_keeping_finished_tasks(built: Project) -> None:
    import shutil

    calibration = built.inputs / "calibration.jsonl"
    original = calibration.read_text()
    calibration.write_text(original * 30)  # thresholds now scores ~2400 rows: a wide kill window
    stamps = built.root / "build" / "tiny" / ".stamps"
    try:
        for _attempt in range(3):
            shutil.rmtree(built.root / "build", ignore_errors=True)
            shutil.rmtree(built.root / "dist", ignore_errors=True)
            proc = subprocess.Popen([str(BIN / "doit"), "build:tiny"], cwd=built.root,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 120
            while not (stamps / "labels.json").exists() and time.time() < deadline \
                    and proc.poll() is None:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if not (stamps / "thresholds.json").exists():
                break  # killed while thresholds ran: the case under test
        assert (stamps / "labels.json").exists() and not (stamps / "thresholds.json").exists()
        resumed = built.doit("build:tiny")
        assert resumed.code == 0, resumed.output
        assert {"weights:tiny", "tokenizer:tiny", "labels:tiny"} <= resumed.fresh
        assert resumed.executed == {"thresholds:tiny", "package:tiny-pytorch"}
        assert built.doit("build:tiny").executed == set()
    finally:
        calibration.write_text(original)
    assert built.doit("build:tiny").executed == {"thresholds:tiny", "package:tiny-pytorch"}


def test_parallel_process_build(built: Project) -> None:
    import shutil

    shutil.rmtree(built.root / "build")
    run = built.doit("-n", "2", "-P", "process", "build:tiny")
    assert run.code == 0, run.output
    assert run.executed == ALL
    assert built.doit("build:tiny").executed == set()


def test_git_commit_version_reaches_packaging_only(tmp_path: Path, tiny_inputs: Path) -> None:
    project = make_project(tmp_path / "g", tiny_inputs)
    project.edit('version: "1.0.0"', 'version: "1.0.0-{git_commit}"')

    def commit(message: str) -> str:
        for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t",
                                                     "commit", "-q", "--allow-empty", "-m", message]):
            subprocess.run(["git", *args], cwd=project.root, check=True, capture_output=True)
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=project.root,
                              check=True, capture_output=True, text=True).stdout.strip()

    first = commit("one")
    assert project.doit("build:tiny").executed == ALL
    assert (project.dist(version=f"1.0.0-{first}") / "bundle.tar.gz").is_file()
    second = commit("two")
    run = project.doit("build:tiny")
    assert run.executed == {"package:tiny-pytorch"}, run.output
    manifest = json.loads((project.dist(version=f"1.0.0-{second}") / "manifest.json").read_text())
    assert manifest["version"] == f"1.0.0-{second}"
