"""One broken spec among many blocks only its own bundle: `doit list` and the other bundles' builds
work, its own tasks fail with its problems, and `kiln validate` / `kiln build` still report it
(exit 3). Real doit and kiln in subprocesses, on a real tiny model."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import SPEC, make_project

pytestmark = pytest.mark.slow

BROKEN = SPEC.format(name="broken").replace("checkpoint: broken/checkpoint", "checkpoint: nowhere")


def test_one_broken_spec_does_not_block_the_others(tmp_path: Path, tiny_inputs: Path) -> None:
    project = make_project(tmp_path, tiny_inputs, name="good")
    (project.root / "bundles" / "broken.yaml").write_text(BROKEN)

    listed = project.doit("list", "--all")
    assert listed.code == 0, listed.output
    assert "build:good" in listed.output and "build:broken" in listed.output
    assert "BROKEN SPEC broken.yaml" in listed.output

    good = project.doit("build:good")
    assert good.code == 0, good.output
    assert (project.dist() / "bundle.tar.gz").is_file()

    bad = project.doit("build:broken")
    assert bad.code != 0
    assert "broken.yaml does not validate (4 problems" in bad.output
    assert "bundles/broken.yaml:7:15: source.checkpoint: 'nowhere' does not exist" in bad.output
    assert "Traceback" not in bad.output

    validate = project.kiln("validate")
    assert validate.returncode == 3
    assert validate.stderr.splitlines()[1].startswith("bundles/broken.yaml:7:15: source.checkpoint:")

    build = project.kiln("build")  # the healthy bundle (up to date) is built, the broken one reported
    assert build.returncode == 3, build.stdout + build.stderr
    assert "-- package:good-pytorch" in build.stdout + build.stderr
    assert "kiln: 4 problems found:" in build.stderr
