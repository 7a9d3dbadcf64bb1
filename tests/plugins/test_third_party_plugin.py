"""Proof by example (issue 21): a third-party package adds a backend with a stage of its own and a
URL scheme, through the entry-point groups modelkiln's own use, without any edit to modelkiln.

tests/plugins/toy/ (its own pyproject) is copied to a temporary directory and pip-installed into
this venv (`--no-deps --no-build-isolation`: setuptools from the venv, no index); it is uninstalled
at teardown. Then, with real `kiln` and `doit` on a real tiny model: `kiln plugins` lists it by
package (its broken entry as one line), `kiln plan` shows its task, `doit build` runs it and packs
the toy bundle, and `kiln publish --to toymem://...` publishes through its transport.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import BIN, SPEC, Project, make_project

HERE = Path(__file__).parent
SRC = HERE.parents[1] / "src" / "modelkiln"


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "-q", "--no-input",
                           "--disable-pip-version-check"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def toy_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """kiln-toy installed into this venv for the module's tests (and removed after them)."""
    where = tmp_path_factory.mktemp("toy") / "kiln-toy"
    shutil.copytree(HERE / "toy", where, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info",
                                                                       "build"))
    _pip("install", "--no-deps", "--no-build-isolation", str(where))
    try:
        yield where
    finally:
        _pip("uninstall", "-y", "kiln-toy")


@pytest.fixture(scope="module")
def project(toy_installed: Path, tmp_path_factory: pytest.TempPathFactory,
            tiny_inputs: Path) -> Project:
    spec = SPEC.replace("  pytorch: {{}}\n", "  pytorch: {{}}\n  toy: {{greeting: hi}}\n")
    return make_project(tmp_path_factory.mktemp("toyproj") / "proj", tiny_inputs, spec=spec)


def run(project: Project, tool: str, *args: str,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(BIN / tool), *args], cwd=project.root, capture_output=True,
                          text=True, timeout=900,
                          env={**os.environ, "KILN_CACHE_URI": "off", **(env or {})})
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done


def test_nothing_in_modelkiln_names_the_plugin() -> None:
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "toystamp" not in text and "toymem" not in text and "kiln_toy" not in text, path


def test_kiln_plugins_lists_it_by_package_and_its_broken_entry_in_one_line(
        project: Project) -> None:
    done = run(project, "kiln", "plugins", "--json")
    assert done.returncode == 1  # one entry of kiln-toy cannot load
    rows = {(r["kind"], r["name"]): r for r in json.loads(done.stdout)}
    for key in (("backend", "toy"), ("stage", "toystamp"), ("transport", "toymem")):
        assert rows[key]["package"] == "kiln-toy" and rows[key]["version"] == "0.1.0"
        assert rows[key]["ok"], rows[key]
    broken = rows[("stage", "toybroken")]
    assert not broken["ok"] and "ModuleNotFoundError" in broken["problem"]
    assert rows[("stage", "weights")]["package"] == "modelkiln"
    assert rows[("transport", "s3")]["ok"] and rows[("backend", "onnx")]["ok"]
    table = run(project, "kiln", "plugins").stdout
    assert "kiln-toy 0.1.0" in table and "BROKEN: cannot load kiln_toy.missing" in table


def test_plan_shows_its_task_and_doit_build_runs_it(project: Project) -> None:
    done = run(project, "kiln", "plan", "--json")
    assert done.returncode == 0, done.stderr
    # the broken entry of kiln-toy is one warning line naming its package; planning goes on
    warnings = [line for line in done.stderr.splitlines() if "toybroken" in line]
    assert len(warnings) == 1 and "from kiln-toy 0.1.0" in warnings[0], done.stderr
    tasks = {t["task"]: t for t in json.loads(done.stdout)}
    assert tasks["toystamp:tiny"]["action"] == "run"
    assert tasks["package:tiny-toy"]["action"] == "run"
    built = project.doit("build:tiny", timeout=900)
    assert built.code == 0, built.output
    assert {"toystamp:tiny", "package:tiny-toy"} <= built.executed
    stamp = project.root / "build" / "tiny" / "toystamp" / "toy.txt"
    labels = json.loads((project.inputs / "label_order.json").read_text())
    assert stamp.read_text() == f"hi tiny: {len(labels)} labels\n"
    with tarfile.open(project.dist("toy") / "bundle.tar.gz") as tar:
        assert {"toy.txt", "model.safetensors", "thresholds.json"} <= set(tar.getnames())
    manifest = json.loads((project.dist("toy") / "manifest.json").read_text())
    assert manifest["backend"] == "toy" and "kiln-toy" in manifest["tools"]
    again = project.doit("build:tiny")
    assert again.code == 0 and not again.executed, again.output  # up to date, like any stage
    # its spec section is its params: an edit reruns its stage and its package only
    project.edit("greeting: hi", "greeting: hey")
    edited = project.doit("build:tiny")
    assert edited.code == 0 and edited.executed == {"toystamp:tiny", "package:tiny-toy"}, \
        edited.output


def test_publish_to_its_scheme(project: Project, tmp_path: Path) -> None:
    built = project.doit("build:tiny", timeout=900)
    assert built.code == 0, built.output
    mem = tmp_path / "toymem"
    env = {"KILN_TOYMEM_DIR": str(mem)}
    done = run(project, "kiln", "publish", "--backend", "toy", "--to",
               "toymem://shelf/{name}/{version}/{backend}/", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    where = mem / "shelf" / "tiny" / "1.0.0" / "toy"
    manifest = json.loads((where / "manifest.json").read_text())
    assert manifest["backend"] == "toy"
    assert "toymem://shelf/tiny/1.0.0/toy/" in done.stdout + done.stderr
    # the same bytes again: a no-op, as for s3:// and file://
    again = run(project, "kiln", "publish", "--backend", "toy", "--to",
                "toymem://shelf/{name}/{version}/{backend}/", env=env)
    assert again.returncode == 0 and "unchanged" in again.stdout + again.stderr


def test_the_action_cache_on_its_scheme(project: Project, tmp_path: Path) -> None:
    """A plug-in scheme serves KILN_CACHE_URI too: a trusted build saves its records there, and a
    clean checkout restores its tasks from them (the toy stage's among them)."""
    env = {**os.environ, "KILN_TOYMEM_DIR": str(tmp_path / "toymem"),
           "KILN_CACHE_URI": "toymem://cache/ci", "KILN_CACHE_WRITE": "1"}
    shutil.rmtree(project.root / "build", ignore_errors=True)
    shutil.rmtree(project.root / "dist", ignore_errors=True)
    shutil.rmtree(project.root / ".kiln", ignore_errors=True)

    def doit() -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(BIN / "doit"), "build:tiny"], cwd=project.root, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr, \
            done.stdout + done.stderr
        return done

    saved = doit()
    assert "toystamp:tiny: saved to cache" in saved.stdout + saved.stderr
    assert (tmp_path / "toymem" / "cache" / "ci").is_dir()
    for kept in ("build", "dist", ".kiln"):
        shutil.rmtree(project.root / kept)
    restored = doit()
    out = restored.stdout + restored.stderr
    assert "toystamp:tiny: restored from cache" in out and "weights:tiny: restored from cache" in out
    assert (project.root / "build" / "tiny" / "toystamp" / "toy.txt").read_text().startswith("hey")
