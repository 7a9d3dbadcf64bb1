"""`kiln plan` says what will happen to an upstream task: one the cache restores is "restored
from the cache", not "will run". Real `kiln` on a project with a real tiny model and a real
file:// action cache."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from helpers import BIN, make_project


def test_an_upstream_cache_hit_is_not_said_to_run(tmp_path: Path, tiny_inputs: Path) -> None:
    project = make_project(tmp_path / "proj", tiny_inputs)
    env = {**os.environ, "KILN_CACHE_URI": (tmp_path / "cache").as_uri(),
           "KILN_CACHE_WRITE": "1"}

    def kiln(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(BIN / "kiln"), *args], cwd=project.root, env=env,
                              capture_output=True, text=True, timeout=600)
        assert "Traceback" not in done.stdout + done.stderr, done.stderr
        return done

    assert kiln("build").returncode == 0
    # labels' outputs and stamp gone (the cache holds them); its readers keep their stamps
    shutil.rmtree(project.root / "build" / "tiny" / "labels")
    (project.root / "build" / "tiny" / ".stamps" / "labels.json").unlink()
    plan = kiln("plan").stdout
    assert "hit  labels:tiny" in plan, plan
    assert "upstream labels:tiny will be restored from the cache" in plan
    assert "upstream labels:tiny will run" not in plan
