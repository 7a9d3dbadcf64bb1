"""The pull-request comment people read (issue 24 items 4, 7, 8, 9) on a real git repository.

- one broken spec blanks nothing: its problems at the top, the full plan of the others, exit 3;
  `--base` naming a ref git does not know is a usage error (64);
- headline first, then a Mermaid chart of per-label thresholds and F1 with the numbers in a
  table, the per-task table folded in <details> with the up-to-date rows in one;
- a change that keeps a version already published with other bytes is warned about at the top.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import BIN, Project, make_project


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root,
                          check=True, capture_output=True, text=True).stdout.strip()


def kiln(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "kiln"), *args], cwd=root, capture_output=True, text=True,
                          timeout=600, env={**os.environ})


@pytest.fixture
def repo(tmp_path: Path, tiny_inputs: Path) -> Project:
    project = make_project(tmp_path / "repo", tiny_inputs)
    (project.root / ".gitignore").write_text("/build/\n/dist/\n/.kiln/\n/published/\n")
    git(project.root, "init", "-q", "-b", "main")
    git(project.root, "add", "-A")
    git(project.root, "commit", "-q", "-m", "base")
    return project


def test_a_broken_spec_blanks_nothing(repo: Project) -> None:
    (repo.root / "bundles" / "broken.yaml").write_text(
        "apiVersion: modelkiln/v1\nkind: Bundle\nname: broken\nversion: 1\n")
    md = kiln(repo.root, "plan", "--markdown", "--base", "HEAD", "--cache", "off")
    assert md.returncode == 3, md.stderr
    top, _, rest = md.stdout.partition("### tiny 1.0.0")
    assert "> [!CAUTION]" in top and "**1 spec does not validate**" in top
    assert "broken.yaml:" in top
    assert rest and "| `weights:tiny` | **run** | never built (no stamp) |" in rest
    plain = kiln(repo.root, "plan", "--cache", "off")
    assert plain.returncode == 3
    assert "run  weights:tiny" in plain.stdout and "tasks would run" in plain.stdout
    assert "kiln: 1 spec does not validate" in plain.stderr and "broken.yaml:" in \
        plain.stderr
    as_json = kiln(repo.root, "plan", "--json", "--cache", "off")
    assert as_json.returncode == 3 and '"task": "weights:tiny"' in as_json.stdout


def test_an_unknown_base_is_a_usage_error(repo: Project) -> None:
    md = kiln(repo.root, "plan", "--markdown", "--base", "nosuchref", "--cache", "off")
    assert md.returncode == 64, md.stdout + md.stderr
    assert "kiln: 'nosuchref': not a commit or tree" in md.stderr and md.stdout == ""


@pytest.mark.slow
def test_headline_chart_folded_tasks_and_the_version_warning(
        repo: Project, tmp_path: Path) -> None:
    cache = (tmp_path / "shared-cache").as_uri()
    built = kiln(repo.root, "build", "--cache", cache, "--cache-write")
    assert built.returncode == 0, built.stderr
    published = kiln(repo.root, "publish")  # 1.0.0 goes to <project>/published/
    assert published.returncode == 0, published.stderr
    repo.edit("default: 0.5", "default: 0.3")  # gamma keeps the default: its threshold moves
    git(repo.root, "commit", "-q", "-am", "lower the default, keep the version")
    md = kiln(repo.root, "plan", "--markdown", "--base", "HEAD~1", "--cache", cache)
    assert md.returncode == 0, md.stderr
    text = md.stdout
    warning, _, body = text.partition("bundle: ")
    assert "> [!WARNING]" in warning and "**tiny 1.0.0** (pytorch)" in warning
    assert "bump `version`: publish would refuse with exit 5" in warning
    head, _, folded = body.partition("<details>")
    assert "- **Version** 1.0.0" in head
    assert "- **New bytes**: pytorch (rebuilt; bytes known after `kiln build`)" in head
    assert "- **Spec changes since base**: `thresholds.default`: 0.5 → 0.3" in head
    assert "| `weights:tiny` |" not in head  # the task table is folded
    assert "| `thresholds:tiny` | **run** |" in folded
    assert "| 3 tasks: `weights:tiny`, `tokenizer:tiny`, `labels:tiny` | up to date | - |" \
        in folded
    assert folded.count("</details>") == 1
    rebuilt = kiln(repo.root, "build", "--cache", cache)
    assert rebuilt.returncode == 0, rebuilt.stderr
    after = kiln(repo.root, "plan", "--markdown", "--base", "HEAD~1", "--cache", cache).stdout
    assert "already holds other bytes" in after and "publish would refuse with exit 5" in after
    assert "- **Thresholds moved**: 1 label (`gamma` 0.5 → 0.3)" in after
    assert "```mermaid\nxychart-beta\n" in after
    assert 'x-axis ["alpha", "beta", "gamma", "delta"]' in after
    assert "| label | threshold, base | threshold, this change | F1, base | F1, this change |" \
        in after
    assert "| `gamma` | 0.5000 | 0.3000 |" in after, after
    refused = kiln(repo.root, "publish")  # what the warning said
    assert refused.returncode == 5, refused.stderr
    repo.edit('version: "1.0.0"', 'version: "1.1.0"')
    bumped = kiln(repo.root, "plan", "--markdown", "--base", "HEAD", "--cache", cache).stdout
    assert "[!WARNING]" not in bumped and "- **Version** 1.1.0 (base 1.0.0)" in bumped


def test_a_hostile_label_stays_inside_the_chart_and_its_table_cell() -> None:
    from modelkiln.graph.headline import chart
    from modelkiln.graph.review import Side

    label = '"]\n```\n# heading <img src=x> @team |'
    base = Side("base", None, {label: 0.5, "ok": 0.5}, {label: {"f1": 0.8}})
    change = Side("this", None, {label: 0.25, "ok": 0.5}, {label: {"f1": 0.7}})
    lines = chart("tiny", base, change)
    fence = lines.index("```", 1)
    inside = lines[:fence]
    assert all("\n" not in ln and "`" not in ln[3:] for ln in inside[1:])
    axis = next(ln for ln in inside if ln.lstrip().startswith("x-axis"))
    assert axis.count('"') == 4  # two labels, each one quoted string
    row = next(ln for ln in lines[fence:] if "heading" in ln)
    # a code span fenced by more backticks than it holds (inert: no HTML, no heading), with
    # its `|` escaped so the cell stays one cell
    assert row.startswith("| ````") and row.count(" | ") == 4 and "\\|" in row
    assert lines.count("```") == 1 and lines.count("```mermaid") == 1
