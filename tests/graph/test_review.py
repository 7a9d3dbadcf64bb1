"""The CI review commands on a real git repository: `kiln changed` / `plan --changed-since` (the
matrix) and `kiln plan --markdown` (the pull-request comment), with a base found in the cache."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import BIN, Project, make_project


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root,
                          check=True, capture_output=True, text=True).stdout.strip()


def kiln(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "kiln"), *args], cwd=root, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **env})


@pytest.fixture
def repo(tmp_path: Path, tiny_inputs: Path) -> Project:
    project = make_project(tmp_path / "repo", tiny_inputs)
    (project.root / ".gitignore").write_text("/build/\n/dist/\n/.kiln/\n")
    git(project.root, "init", "-q", "-b", "main")
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", "base")
    return project


def test_changed_lists_bundles_whose_spec_or_inputs_changed(repo: Project) -> None:
    assert json.loads(kiln(repo.root, "changed", "HEAD").stdout) == []
    repo.edit("default: 0.5", "default: 0.45")
    assert json.loads(kiln(repo.root, "changed", "HEAD").stdout) == ["tiny"]
    assert json.loads(kiln(repo.root, "plan", "--changed-since", "HEAD", "--json").stdout) == ["tiny"]
    git(repo.root, "checkout", "-q", "--", ".")
    calibration = repo.inputs / "calibration.jsonl"
    calibration.write_text(calibration.read_text() + calibration.read_text().splitlines()[0] + "\n")
    assert json.loads(kiln(repo.root, "changed", "HEAD").stdout) == ["tiny"]
    git(repo.root, "checkout", "-q", "--", ".")
    (repo.inputs / "checkpoint" / "extra-shard.bin").write_bytes(b"new")  # untracked, in the ckpt
    assert json.loads(kiln(repo.root, "changed", "HEAD").stdout) == ["tiny"]
    empty_tree = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # CI's base on a first push
    assert json.loads(kiln(repo.root, "changed", empty_tree).stdout) == ["tiny"]


def test_changed_against_a_missing_ref_is_one_clear_error(repo: Project) -> None:
    done = kiln(repo.root, "changed", "origin/nope")
    assert done.returncode == 64  # a usage error: the command line names a ref that is not there
    assert "kiln: 'origin/nope': not a commit or tree" in done.stderr and \
        "git fetch origin main" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_markdown_shows_cache_hits_spec_changes_and_deltas_against_the_base(
        repo: Project, tmp_path: Path) -> None:
    cache = (tmp_path / "shared-cache").as_uri()
    built = kiln(repo.root, "build", "--cache", cache, "--cache-write")
    assert built.returncode == 0, built.stderr
    base = git(repo.root, "rev-parse", "HEAD")
    runner = tmp_path / "runner"  # a fresh clone: the pull request's runner
    git(tmp_path, "clone", "-q", str(repo.root), str(runner))
    git(runner, "checkout", "-q", "-b", "change")
    spec = runner / "bundles" / "tiny.yaml"
    spec.write_text(spec.read_text().replace("default: 0.5", "default: 0.45"))
    git(runner, "commit", "-q", "-am", "lower the default threshold")
    md = kiln(runner, "plan", "--markdown", "--base", "origin/main", "--cache", cache)
    assert md.returncode == 0, md.stderr
    text = md.stdout
    assert "- **Spec changes since base**: `thresholds.default`: 0.5 → 0.45" in text
    # version 1.0.0 kept while main built it with other bytes: the merge would fail at publish
    assert "> [!WARNING]" in text and "publish would refuse with exit 5" in text
    assert "| `weights:tiny` | cache hit |" in text
    assert "| `thresholds:tiny` | **run** | never built (no stamp)" in text
    assert f"base from cache index of {base[:10]}" in text
    assert "this change from not built yet" in text
    assert kiln(runner, "build", "--cache", cache).returncode == 0  # read-only PR build
    after = kiln(runner, "plan", "--markdown", "--base", "origin/main", "--cache", cache).stdout
    assert "this change from `dist/tiny/1.0.0/pytorch`" in after
    assert "| `bundle.tar.gz` |" in after and "| `model_card.md` |" in after
    # built here, yet 1.0.0 is kept with bytes other than main built: not "nothing to do"
    assert "### tiny 1.0.0 (built; publish would refuse this version)" in after


def test_markdown_without_a_base_says_so(repo: Project) -> None:
    md = kiln(repo.root, "plan", "--markdown", "--cache", "off")
    assert md.returncode == 0, md.stderr
    assert "### tiny 1.0.0" in md.stdout and "**pytorch**: no base found; this change from" in md.stdout
    assert "base from no base" not in md.stdout
    assert "| `weights:tiny` | **run** | never built (no stamp) |" in md.stdout
