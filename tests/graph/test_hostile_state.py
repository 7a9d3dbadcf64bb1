"""Hostile local state (tests/hostile_local_state.py) under the real `doit build` and `kiln plan`.

One tiny project is built once per module and copied aside; each case puts it back, replaces one
kind of state file (or directory) with something hostile and runs a command in a subprocess with
a timeout. The command must exit 0 having treated the file as a miss (and then the built bundle
is unchanged: no wrong output), or stop with one `kiln:` line (doit: the failed task's one line);
never a traceback, never a hang.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from helpers import BIN, Project, make_project
from hostile_local_state import KINDS, RERUN, RERUN_STAMP, TARGETS, poison, run

pytestmark = pytest.mark.slow

# a no-op takes about half a second; a hang is killed here and fails the case
TIMEOUT = float(os.environ.get("HOSTILE_STATE_TIMEOUT", "30"))
MANIFEST = "dist/tiny/1.0.0/pytorch/manifest.json"


class Built:
    """A built project and a copy of it as it was, to put back before each case."""

    def __init__(self, project: Project, saved: Path):
        self.project, self.saved = project, saved

    def restore(self) -> Path:
        root = self.project.root
        shutil.rmtree(root)
        subprocess.run(["cp", "-a", str(self.saved), str(root)], check=True)  # same path: same
        return root  # cache entry names (they are keyed by the spec's absolute path)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_inputs: Path) -> Built:
    base = tmp_path_factory.mktemp("hostile")
    project = make_project(base / "p", tiny_inputs)
    assert project.doit("build:tiny").code == 0
    time.sleep(0.2)  # past the racy window: the no-op records the bundle's verdict
    assert project.doit("build:tiny").executed == set()
    subprocess.run(["cp", "-a", str(project.root), str(base / "saved")], check=True)
    return Built(project, base / "saved")


def _case(built: Built, target: str, kind: str, argv: list[str]) -> None:
    root = built.restore()
    if target in RERUN:  # only a task that runs takes its lock
        (root / RERUN_STAMP.format(name="tiny")).unlink()
    paths = TARGETS[target](root)
    assert paths, f"the built project has no {target} state"
    for path in paths:
        if not poison(path, kind):
            pytest.skip(f"cannot make a {kind} here")
    outcome = run(argv, root, TIMEOUT)
    assert not outcome.hang, f"hung on {target}={kind}:\n{outcome.output[-2000:]}"
    assert not outcome.traceback, outcome.output[-3000:]
    assert outcome.clean, f"rc={outcome.code}:\n{outcome.output[-2000:]}"
    if outcome.code == 0 and argv[0].endswith("doit"):
        manifest = (root / MANIFEST).read_bytes()
        assert manifest == (built.saved / MANIFEST).read_bytes(), "a miss built another bundle"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", list(TARGETS))
def test_doit_build_survives_hostile_state(built: Built, target: str, kind: str) -> None:
    _case(built, target, kind, [str(BIN / "doit"), "build:tiny"])


@pytest.mark.parametrize("kind", ["deep-list", "json-wrong-types", "fifo", "dev-zero-symlink",
                                  "directory"])
@pytest.mark.parametrize("target", ["verdicts", "hashcache", "bundle-cache", "spec-cache",
                                    "stamps", "stamps-dir"])
def test_kiln_plan_survives_hostile_state(built: Built, target: str, kind: str) -> None:
    _case(built, target, kind, [str(BIN / "kiln"), "plan", "bundles/tiny.yaml"])
