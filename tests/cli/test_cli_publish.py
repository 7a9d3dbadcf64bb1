"""`kiln publish --backend X` without specs publishes the bundles that have X and leaves the
others out; a backend this host does not build says so (not "build it first"); `--json` is a
receipt with every digest. `doit list` shows a broken spec's bundle with the task set it had.
Real `kiln`/`doit` on a project with a real tiny model (one bundle built, one never built)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import BIN, SPEC, Project, make_project
from modelkiln.stages import trt


def run(project: Project, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(BIN / tool), *args], cwd=project.root, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "KILN_CACHE_URI": "off"})
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_inputs: Path) -> Project:
    """`tiny` (pytorch, built) and `gpu` (onnx + tensorrt, never built)."""
    p = make_project(tmp_path_factory.mktemp("publish") / "proj", tiny_inputs)
    gpu = SPEC.format(name="gpu").replace("  pytorch: {}\n", "  onnx: {}\n  tensorrt: {}\n")
    (p.root / "bundles" / "gpu.yaml").write_text(gpu)
    (p.root / "bundles" / "gpu").symlink_to(p.root / "bundles" / "tiny")
    done = run(p, "kiln", "build", "-t", "build:tiny")
    assert done.returncode == 0, done.stdout + done.stderr
    return p


def test_backend_without_specs_leaves_out_bundles_without_it(project: Project) -> None:
    done = run(project, "kiln", "publish", "--backend", "pytorch", "--to", "local", "--json")
    assert done.returncode == 0, done.stderr
    receipt = json.loads(done.stdout)
    assert [(r["name"], r["backend"]) for r in receipt] == [("tiny", "pytorch")]
    published = project.root / "published" / "tiny" / "1.0.0" / "pytorch"
    manifest = json.loads((published / "manifest.json").read_text())
    assert receipt[0]["remote"]["archive_sha256"] == manifest["archive"]["sha256"]
    assert receipt[0]["registry_name"] == "tiny-pytorch"
    # a spec named on the command line still must have the backend asked for
    done = run(project, "kiln", "publish", "bundles/gpu.yaml", "--backend", "pytorch",
               "--to", "local")
    assert done.returncode == 1 and "backend 'pytorch' is not enabled in gpu.yaml" in done.stderr
    done = run(project, "kiln", "publish", "--backend", "onxx")
    assert done.returncode == 64 and "--backend onxx: not a backend (did you mean 'onnx'?" \
        in done.stderr


@pytest.mark.skipif(trt.host_facts().unusable() is None, reason="this host builds TensorRT")
def test_a_backend_this_host_does_not_build_says_so(project: Project) -> None:
    done = run(project, "kiln", "publish", "--backend", "tensorrt", "--to", "local")
    assert done.returncode == 1
    assert "gpu: this host does not build the tensorrt bundle (trt:gpu: " in done.stderr
    assert "backends.tensorrt.when is gpu-available" in done.stderr
    assert "kiln build" not in done.stderr  # building here would skip it again


def test_doit_list_keeps_a_broken_specs_task_set(project: Project) -> None:
    def names() -> list[str]:
        done = run(project, "doit", "list", "--all", "--quiet")
        assert done.returncode == 0, done.stderr
        return sorted(line.split()[0] for line in done.stdout.splitlines())

    healthy = names()
    spec = project.root / "bundles" / "gpu.yaml"
    text = spec.read_text()
    spec.write_text(text.replace('version: "1.0.0"', "version: 1"))  # not a string: invalid
    try:
        assert run(project, "kiln", "validate").returncode == 3
        assert names() == healthy
    finally:
        spec.write_text(text)
    assert any(n.startswith("package:gpu-onnx") for n in healthy)
