"""Usage errors exit 64 from every command (argparse's own 2 would read as hash drift): a spec,
task or backend named on the command line that is not there, a bad option value. Each is one
`kiln:` line on stderr, no traceback, and nothing is built. The real `kiln` and `doit` run in a
subprocess on a project with a real tiny model."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import BIN, Project, make_project


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KILN_CACHE_URI": "off"})
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


@pytest.fixture
def project(tmp_path: Path, tiny_inputs: Path) -> Project:
    return make_project(tmp_path / "proj", tiny_inputs)


def _usage(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert done.returncode == 64, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.startswith("kiln:")]
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr
    return done.stderr


def test_a_spec_named_that_is_not_there(project: Project) -> None:
    kiln = str(BIN / "kiln")
    for verb in ("validate", "plan", "build"):
        _usage(run([kiln, verb, "bundles/nonexistent.yaml"], project.root),
               "kiln: bundles/nonexistent.yaml: no such spec file or directory")
    assert not (project.root / "build").exists()


def test_bad_option_values(project: Project) -> None:
    kiln = str(BIN / "kiln")
    _usage(run([kiln, "plan", "--cache", "http://x"], project.root),
           "argument --cache: 'http://x' is not s3://bucket/prefix")
    _usage(run([kiln, "build", "--cache", "ftp://x"], project.root), "argument --cache")
    _usage(run([kiln, "build", "-j", "0"], project.root), "argument -j/--jobs: '0'")
    _usage(run([kiln, "build", "-j", "x"], project.root), "argument -j/--jobs: 'x'")
    assert not (project.root / "build").exists()
    for off in ("off", "false"):  # the documented ways to turn the cache off still parse
        assert run([kiln, "plan", "--cache", off], project.root).returncode == 0


def test_an_unknown_task_suggests_real_names(project: Project) -> None:
    kiln = str(BIN / "kiln")
    err = _usage(run([kiln, "build", "-t", "nosuchtask"], project.root),
                 "kiln: -t nosuchtask: no such task", "`doit list --all`")
    assert "kiln list" not in err
    _usage(run([kiln, "build", "-t", "weights:tin"], project.root),
           "-t weights:tin: no such task (did you mean weights:tiny")
    _usage(run([kiln, "build", "-t", "nomatch:*"], project.root), "-t nomatch:*: no such task")
    assert not (project.root / "build").exists()
    # real names and patterns still run
    done = run([kiln, "build", "-t", "labels:tiny", "-t", "token*"], project.root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (project.root / "build" / "tiny" / "labels").is_dir()


def test_an_unknown_backend_to_skip(project: Project) -> None:
    kiln = str(BIN / "kiln")
    err = _usage(run([kiln, "build", "--skip", "foo"], project.root),
                 "kiln: skip 'foo': not a backend (the backends are ")
    assert all(b in err for b in ("pytorch", "onnx", "tensorrt"))  # in the registry's order
    _usage(run([kiln, "plan", "--skip", "onnx,onxx"], project.root),
           "skip 'onxx': not a backend (did you mean 'onnx'?")
    done = run([str(BIN / "doit"), "build", "skip=onxx"], project.root)
    _usage(done, "skip 'onxx': not a backend")
    assert not (project.root / "build").exists()
    assert run([kiln, "plan", "--skip", "onnx"], project.root).returncode == 0


def test_python_dash_m_modelkiln_is_kiln(tmp_path: Path) -> None:
    done = run([sys.executable, "-m", "modelkiln", "--version"], tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("modelkiln "), done.stderr
    _usage(run([sys.executable, "-m", "modelkiln", "no-such-command"], tmp_path))


def test_the_demo_has_a_real_parser(tmp_path: Path) -> None:
    done = run([sys.executable, "-m", "modelkiln.demo", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m modelkiln.demo [-h] [dir]")
    assert list(tmp_path.iterdir()) == []  # no folder named --help, nothing written
    done = run([sys.executable, "-m", "modelkiln.demo", "a", "b"], tmp_path)
    assert done.returncode == 64 and "unrecognized arguments: b" in done.stderr
    assert list(tmp_path.iterdir()) == []
