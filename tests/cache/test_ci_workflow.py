"""The example CI workflow: valid for GitHub (its schema), clean under a workflow security
linter (with Dependabot's config), third-party actions pinned by commit, and every `kiln` command
it runs accepted by the real command-line parser; plus the rules it keeps (issue 24 item 12):
pull requests never write the cache, every job has a timeout, only the publishing job gets an
OIDC token, a fork's plan goes to the job summary, failed gates leave artifacts. actionlint is not
run: it has no wheel on the package index here (its sdist downloads a binary at build time). The
commands' behaviour is tested in tests/graph/test_review*.py, tests/graph/test_changed_ci.py and
tests/cache/test_two_runners.py."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import yaml

from helpers import BIN, REPO
from modelkiln.cli import build_parser

WORKFLOW = REPO / ".github" / "workflows" / "models.yml"
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))  # every one gets linted
DEPENDABOT = REPO / ".github" / "dependabot.yml"


def jobs() -> dict[str, Any]:
    return dict(yaml.safe_load(WORKFLOW.read_text())["jobs"])


def steps() -> list[dict[str, Any]]:
    return [s for job in jobs().values() for s in job["steps"]]


def test_workflow_matches_githubs_schema() -> None:
    done = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema",
                           "vendor.github-workflows", *map(str, WORKFLOWS)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema",
                           "vendor.dependabot", str(DEPENDABOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_workflow_passes_zizmor_audits() -> None:
    done = subprocess.run([str(BIN / "zizmor"), "--offline", "--persona=auditor",
                           *map(str, WORKFLOWS), str(DEPENDABOT)],
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
    assert "--cache-write" not in text
    found = jobs()
    for name in ("plan", "build"):  # the jobs a pull request runs
        assert found[name]["env"]["KILN_CACHE_WRITE"] == "0"
    assert found["build"]["if"].startswith("github.event_name == 'pull_request'")
    publish = found["publish"]  # the only writer: main only, in the main-only environment
    assert publish["env"]["KILN_CACHE_WRITE"] == "1"
    assert publish["if"].startswith("github.event_name == 'push'")
    assert publish["environment"] == "models-main"
    setup = next(s for s in publish["steps"] if "setup-python" in s.get("uses", ""))
    assert "cache" not in setup["with"]  # no pip cache a pull request could have written


def test_least_privilege_timeouts_and_oidc_for_publishing_only() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow["permissions"] == {"contents": "read"}
    for name, job in jobs().items():
        assert isinstance(job.get("timeout-minutes"), int), name
        perms = job.get("permissions", {})
        assert ("id-token" in perms) == (name == "publish"), name
        assert perms.get("contents", "read") == ("write" if name == "mark-published" else "read")
        for step in job["steps"]:
            if "checkout" in step.get("uses", ""):
                assert step["with"]["persist-credentials"] is False
    assert "KILN_CACHE_KEY_ID" not in str(jobs()["publish"])  # no long-lived key for main
    assert "download.pytorch.org/whl/cpu" in workflow["env"]["PIP_EXTRA_INDEX_URL"]


def test_main_lists_changes_since_the_last_good_publish_and_forks_get_a_summary() -> None:
    found = jobs()
    changed = next(s for s in found["plan"]["steps"] if s.get("id") == "changed")["run"]
    assert "--last-good kiln-published --shards 100" in changed
    assert "--shards 100" in changed.split("else")[0]
    mark = found["mark-published"]
    assert mark["needs"] == ["plan", "publish"] and "!cancelled()" in mark["if"]
    assert "needs.publish.result == 'success' || needs.publish.result == 'skipped'" in mark["if"]
    comment = next(s for s in found["plan"]["steps"] if "github-script" in s.get("uses", ""))
    assert "head.repo.full_name == github.repository" in comment["if"]
    assert comment["continue-on-error"] is True
    markdown = next(s for s in found["plan"]["steps"] if s.get("id") == "markdown")["run"]
    assert "GITHUB_STEP_SUMMARY" in markdown and "set +e" in markdown


def test_failed_gates_leave_artifacts() -> None:
    for name in ("build", "publish"):
        upload = next(s for s in jobs()[name]["steps"]
                      if "upload-artifact" in s.get("uses", ""))
        assert upload["if"] == "failure()" and upload["with"]["path"] == "build/*/*.failed/"


def test_a_leg_becomes_one_build_with_every_bundle(tmp_path: Path) -> None:
    script = next(s for s in jobs()["publish"]["steps"] if "publish:$b" in s.get("run", ""))
    fake = tmp_path / "kiln"
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do echo \"[$a]\"; done\n")
    fake.chmod(0o755)
    done = subprocess.run(["bash", "-eo", "pipefail", "-c", script["run"]], capture_output=True,
                          text=True, env={**os.environ, "LEG": "a b-1 c",
                                          "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[build]", "[-t]", "[publish:a]", "[-t]", "[publish:b-1]",
                                   "[-t]", "[publish:c]"]


def test_every_kiln_command_parses() -> None:
    commands = []
    for step in steps():
        for line in str(step.get("run", "")).splitlines():
            for match in re.finditer(r"\bkiln ([^;|>)`]+)", line):
                words = shlex.split(re.sub(r'"\$(\w+)"|\$(\w+)', "X", match.group(1)))
                commands.append(words)
    assert {c[0] for c in commands} >= {"changed", "plan", "build", "validate"}
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)
        assert callable(args.func), argv
