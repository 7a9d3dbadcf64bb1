"""`kiln changed` where CI runs it (issue 24 items 1-3), on real git repositories.

- main's base is the last commit whose publish went through (a tag the workflow moves), so a
  run replaced by a newer push, or one that failed, loses nothing;
- `--shards N` keeps the matrix at N legs or fewer (GitHub refuses more than 256 jobs);
- a fresh clone without the generated (gitignored) inputs still decides from the specs, and an
  edit to a gitignored input a spec names counts;
- a ref git does not know is a usage error (64), never "every bundle is new".
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import BIN, SPEC, Project, make_project
from modelkiln.graph.changed import EMPTY_TREE, shards

TAG = "kiln-published"


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root,
                          check=True, capture_output=True, text=True).stdout.strip()


def kiln(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "kiln"), *args], cwd=root, capture_output=True, text=True,
                          timeout=600, env={**os.environ})


def changed(root: Path, *args: str) -> list[str]:
    done = kiln(root, "changed", *args)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def spec_repo(root: Path, names: list[str]) -> Path:
    """A repository of specs whose inputs are made by code and gitignored (as in this project):
    a clone holds the specs only."""
    (root / "bundles").mkdir(parents=True)
    (root / ".gitignore").write_text("/bundles/*/\n/build/\n/dist/\n/.kiln/\n")
    for name in names:
        (root / "bundles" / f"{name}.yaml").write_text(SPEC.format(name=name))
    git(root, "init", "-q", "-b", "main")
    commit(root, "specs")
    return root


def commit(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "--allow-empty", "-m", message)
    return git(root, "rev-parse", "HEAD")


def edit(root: Path, name: str, old: str = "default: 0.5", new: str = "default: 0.45") -> None:
    spec = root / "bundles" / f"{name}.yaml"
    spec.write_text(spec.read_text().replace(old, new, 1))


def main_run(root: Path, publish_ok: bool) -> list[str]:
    """What the main workflow does: build and publish what changed since the tag, and move the
    tag to this commit only when every publish went through."""
    todo = changed(root, "--last-good", TAG)
    if publish_ok:
        git(root, "tag", "-f", TAG, "HEAD")
    return todo


def test_replaced_and_failed_runs_lose_no_change(tmp_path: Path) -> None:
    root = spec_repo(tmp_path / "r", ["a", "b", "c"])
    assert main_run(root, publish_ok=True) == ["a", "b", "c"]  # no tag yet: every bundle
    assert main_run(root, publish_ok=True) == []
    edit(root, "a")
    commit(root, "a: lower the default")  # its run is replaced by the next push: never runs
    edit(root, "b")
    commit(root, "b: lower the default")
    assert main_run(root, publish_ok=False) == ["a", "b"]  # a's change is not lost; b fails
    (root / "README.md").write_text("docs only\n")
    commit(root, "docs")
    assert main_run(root, publish_ok=True) == ["a", "b"]  # the failed run is retried
    edit(root, "c")
    commit(root, "c: lower the default")
    assert main_run(root, publish_ok=True) == ["c"]
    assert main_run(root, publish_ok=True) == []
    # history rewritten under the tag (a force-push): the tag is no ancestor, build everything
    git(root, "checkout", "-q", "-b", "rewritten", "HEAD~3")
    commit(root, "rewritten")
    assert main_run(root, publish_ok=False) == ["a", "b", "c"]
    done = kiln(root, "changed", "--last-good", TAG)
    assert f"base {EMPTY_TREE}" in done.stderr


def test_shards_keep_the_matrix_under_githubs_limit(tmp_path: Path) -> None:
    names = [f"m{i:03d}" for i in range(300)]
    root = spec_repo(tmp_path / "r", names)
    flat = changed(root, EMPTY_TREE)
    assert flat == names  # past 256: one job each would fail the matrix
    legs = changed(root, EMPTY_TREE, "--shards", "256")
    assert len(legs) <= 256 and [n for leg in legs for n in leg.split()] == names
    assert len(changed(root, EMPTY_TREE, "--shards", "7")) == 7
    assert changed(root, "HEAD", "--shards", "7") == []
    assert kiln(root, "changed", "HEAD", "--shards", "0").returncode == 64


def test_shards_split_evenly() -> None:
    assert shards(["a", "b", "c"], 5) == ["a", "b", "c"]
    assert shards(["a", "b", "c", "d", "e"], 2) == ["a b c", "d e"]
    assert shards([], 3) == []


def test_a_fresh_clone_without_inputs_decides_from_the_specs(
        tmp_path: Path, tiny_inputs: Path) -> None:
    origin = spec_repo(tmp_path / "origin", ["other"])
    project = make_project(origin, tiny_inputs)  # bundles/tiny/ is gitignored: not in a clone
    commit(origin, "tiny")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    assert not (clone / "bundles" / "tiny").exists()
    assert changed(clone, "HEAD") == []
    assert changed(clone, "HEAD~1") == ["tiny"]
    edit(clone, "tiny")
    assert changed(clone, "HEAD") == ["tiny"]
    assert changed(clone, EMPTY_TREE) == ["other", "tiny"]
    assert project.spec.is_file()


def test_a_broken_spec_beside_a_healthy_one_is_listed_when_it_changed(tmp_path: Path) -> None:
    root = spec_repo(tmp_path / "r", ["good", "bad"])
    (root / "bundles" / "bad.yaml").write_text("name: bad\nversion: [unclosed\n")
    assert changed(root, "HEAD") == ["bad"]  # its leg fails with the spec error, loudly


@pytest.mark.slow
def test_an_edit_to_a_gitignored_input_counts(tmp_path: Path, tiny_inputs: Path) -> None:
    root = tmp_path / "r"
    spec_repo(root, [])
    project: Project = make_project(root, tiny_inputs)
    commit(root, "tiny")
    assert changed(root, "HEAD") == ["tiny"]  # ignored inputs, never built here: unknown
    built = kiln(root, "build", "--cache", "off")
    assert built.returncode == 0, built.stderr
    assert changed(root, "HEAD") == []  # as the build recorded them
    calibration = project.inputs / "calibration.jsonl"
    calibration.write_text(calibration.read_text() + calibration.read_text().splitlines()[0]
                           + "\n")
    assert changed(root, "HEAD") == ["tiny"]  # git cannot see it; the stamps can
    plan = kiln(root, "plan", "--cache", "off")
    assert "input bundles/tiny/calibration.jsonl changed" in plan.stdout


def test_an_unknown_ref_is_a_usage_error(tmp_path: Path) -> None:
    root = spec_repo(tmp_path / "r", ["a"])
    done = kiln(root, "changed", "nosuchref")
    assert done.returncode == 64, done.stderr
    assert "kiln: 'nosuchref': not a commit or tree" in done.stderr and \
        "Traceback" not in done.stderr
    assert kiln(root, "changed").returncode == 64  # neither a ref nor --last-good
