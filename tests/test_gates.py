"""The lint, type and layer gates run as part of the test command, so a red gate is a red run.

Each gate is the tool itself with its configuration from pyproject.toml: ruff (the rule set is
stated there), mypy --strict on src/modelkiln and tests/, and import-linter's contracts (the
layers of the flow, a light runtime, doit only in the graph, YAML only in the spec package). A
failure prints the tool's own report.
"""
from __future__ import annotations

import pkgutil
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import modelkiln

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    """The console script installed beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def _gate(*argv: str) -> None:
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed (exit {proc.returncode}):\n"
                    f"{proc.stdout}{proc.stderr}", pytrace=False)


def test_ruff() -> None:
    _gate(_tool("ruff"), "check", "--no-fix", "src", "tests", "bench")


def test_mypy_strict() -> None:
    _gate(_tool("mypy"))  # files, strictness and overrides come from [tool.mypy]


def test_import_layers() -> None:
    _gate(_tool("lint-imports"), "--no-cache")


def test_every_module_has_a_layer() -> None:
    """A new package or top-level module must be placed in the layers contract, or its imports
    would go unchecked."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["id"] == "layers")["layers"]
    named = {m.removeprefix("modelkiln.") for layer in layers
             for m in re.findall(r"modelkiln\.\w+", layer)}
    present = {m.name for m in pkgutil.iter_modules(modelkiln.__path__)}
    assert present - named == set(), "add these to [tool.importlinter] layers in pyproject.toml"
