"""The example CI workflow: valid for GitHub (its schema), clean under a workflow security
linter, third-party actions pinned by commit, and every `kiln` command it runs accepted by the
real command-line parser. The commands' behaviour is tested in tests/graph/test_review.py and
tests/cache/test_two_runners.py."""
from __future__ import annotations

import re
import shlex
import subprocess
from typing import Any

import yaml

from helpers import BIN, REPO
from modelkiln.cli import build_parser

WORKFLOW = REPO / ".github" / "workflows" / "models.yml"
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))  # every one gets linted


def steps() -> list[dict[str, Any]]:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    return [s for job in jobs.values() for s in job["steps"]]


def test_workflow_matches_githubs_schema() -> None:
    done = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema",
                           "vendor.github-workflows", *map(str, WORKFLOWS)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_workflow_passes_zizmor_audits() -> None:
    done = subprocess.run([str(BIN / "zizmor"), "--offline", "--persona=auditor",
                           *map(str, WORKFLOWS)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings" in done.stdout + done.stderr


def test_third_party_actions_are_pinned_by_commit() -> None:
    uses = [s["uses"] for s in steps() if "uses" in s]
    assert uses
    for ref in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), ref


def test_pull_requests_never_write_the_cache() -> None:
    text = WORKFLOW.read_text()
    plan = yaml.safe_load(text)["jobs"]["plan"]
    assert plan["env"]["KILN_CACHE_WRITE"] == "0"
    assert "--cache-write" not in text
    build = yaml.safe_load(text)["jobs"]["build"]
    assert build["env"]["KILN_CACHE_WRITE"] == "${{ github.event_name == 'push' && '1' || '0' }}"


def test_every_kiln_command_parses() -> None:
    commands = []
    for step in steps():
        for line in str(step.get("run", "")).splitlines():
            for match in re.finditer(r"\bkiln ([^;|>)`]+)", line):
                words = shlex.split(re.sub(r'"\$(\w+)"|\$(\w+)', "X", match.group(1)))
                commands.append(words)
    assert {c[0] for c in commands} >= {"changed", "plan", "build"}
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)
        assert callable(args.func), argv
