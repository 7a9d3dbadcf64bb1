"""Force and clean act on the stamps, where up-to-dateness lives: `kiln build --force [-t TASK]`,
`kiln clean [BUNDLE]`, and doit's own `-a`, `forget` and `clean` (each was a silent no-op: doit
forgot its own database, which no up-to-date check reads). The real `kiln` and `doit` run on a
project with a real tiny model; a task's stamp file and its output's inode say whether it ran."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import BIN, Project, make_project


def run(project: Project, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(BIN / tool), *args], cwd=project.root, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "KILN_CACHE_URI": "off"})
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


def ran(project: Project, *args: str) -> list[str]:
    """The tasks a `kiln build` ran (doit's `.  task` lines)."""
    done = run(project, "kiln", "build", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return [line[3:] for line in done.stdout.splitlines() if line.startswith(".  ")]


def up_to_date(project: Project) -> bool:
    done = run(project, "kiln", "plan", "--check")
    assert done.returncode in (0, 6), done.stderr
    return done.returncode == 0


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_inputs: Path) -> Project:
    p = make_project(tmp_path_factory.mktemp("force") / "proj", tiny_inputs)
    assert ran(p)  # built once; every test below starts from an up-to-date build
    return p


@pytest.fixture(autouse=True)
def built(project: Project) -> Project:
    ran(project)
    assert up_to_date(project)
    return project


def _inode(path: Path) -> int:
    return path.stat().st_ino


def test_build_force_reruns_the_named_task_only(project: Project) -> None:
    labels = project.root / "build" / "tiny" / "labels"
    before = _inode(labels)
    assert ran(project) == []  # nothing to do without --force
    assert ran(project, "--force", "-t", "labels:tiny") == ["labels:tiny"]
    assert _inode(labels) != before  # a fresh output directory was swapped in
    assert up_to_date(project)  # same bytes: nothing downstream is out of date


def test_build_force_without_a_task_reruns_every_task(project: Project) -> None:
    assert sorted(ran(project, "--force")) == sorted(
        ["weights:tiny", "tokenizer:tiny", "labels:tiny", "thresholds:tiny",
         "package:tiny-pytorch"])
    assert up_to_date(project)


def test_doit_always_execute_reruns(project: Project) -> None:
    stamp = project.root / "build" / "tiny" / ".stamps" / "labels.json"
    before = stamp.stat().st_mtime_ns, _inode(stamp)
    done = run(project, "doit", "-a", "labels:tiny")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ".  labels:tiny" in done.stdout
    assert "up to date" not in done.stderr  # the action ran the stage, not a stamp check
    assert (stamp.stat().st_mtime_ns, _inode(stamp)) != before
    assert up_to_date(project)


def test_doit_forget_makes_the_task_run_again(project: Project) -> None:
    done = run(project, "doit", "forget", "thresholds:tiny")
    assert done.returncode == 0 and "forgetting thresholds:tiny" in done.stdout, done.stderr
    assert not (project.root / "build" / "tiny" / ".stamps" / "thresholds.json").exists()
    plan = run(project, "kiln", "plan").stdout
    assert "run  thresholds:tiny\n       never built (no stamp)" in plan
    assert ran(project) == ["thresholds:tiny"]  # its outputs are the same: package stays
    assert run(project, "doit", "forget", "--all").returncode == 0
    assert not list((project.root / "build" / "tiny" / ".stamps").iterdir())
    assert sorted(ran(project)) == sorted(["weights:tiny", "tokenizer:tiny", "labels:tiny",
                                           "thresholds:tiny", "package:tiny-pytorch"])


def test_doit_clean_removes_the_tasks_outputs_and_stamp(project: Project) -> None:
    done = run(project, "doit", "clean", "labels:tiny")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (project.root / "build" / "tiny" / "labels").exists()
    assert not (project.root / "build" / "tiny" / ".stamps" / "labels.json").exists()
    assert (project.root / "build" / "tiny" / "weights").is_dir()  # only that task
    assert "labels:tiny" in ran(project)


def test_kiln_clean_removes_the_bundles_build_and_dist(project: Project) -> None:
    dist = project.root / "dist" / "tiny"
    assert dist.is_dir()
    done = run(project, "kiln", "clean", "tiny")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("tiny: removed ") and str(dist) in done.stdout
    assert not (project.root / "build" / "tiny").exists() and not dist.exists()
    assert not up_to_date(project)
    assert len(ran(project)) == 5
    done = run(project, "kiln", "clean", "tinny")
    assert done.returncode == 64 and "clean tinny: no such bundle (did you mean tiny?" \
        in done.stderr
    assert (project.root / "build" / "tiny").is_dir()  # a usage error removes nothing
    done = run(project, "kiln", "clean")  # every bundle
    assert done.returncode == 0 and not (project.root / "build" / "tiny").exists()
    assert run(project, "kiln", "clean").stdout == "tiny: nothing built\n"
