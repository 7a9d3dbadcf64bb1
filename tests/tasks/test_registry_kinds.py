"""Registry entries across task kinds: the task and the capability it implies are recorded at
publish, `select --require` refuses a missing capability (exit 4), `list --role` finds an
embedding model beside classifiers."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import BIN, Project

pytestmark = pytest.mark.slow


@pytest.fixture
def published(memory_built: Project, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "proj"
    shutil.copytree(memory_built.root, root, symlinks=True, copy_function=shutil.copy2)
    spec = root / "bundles" / "memory.yaml"
    spec.write_text(spec.read_text() + 'publish:\n  store: {root: "${MODEL_STORE_ROOT}", '
                    'agent: "memory-{backend}"}\nregistry:\n  roles: [memory-embedding]\n')
    env = {**os.environ, "MODEL_STORE_ROOT": str(tmp_path / "store")}
    env.pop("KILN_REGISTRY_DIR", None)
    done = subprocess.run([str(BIN / "kiln"), "publish"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return root, env


def _kiln(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "kiln"), *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


def test_entry_records_task_and_implied_capability(published: tuple[Path, dict[str, str]]) -> None:
    root, env = published
    listed = json.loads(_kiln(root, env, "registry", "list", "--role", "memory-embedding",
                              "--json").stdout)
    assert {e["name"] for e in listed} == {"memory-pytorch", "memory-onnx"}
    for entry in listed:
        assert entry["task"] == "feature-extraction"
        assert entry["capabilities"] == ["embeddings"]
    assert json.loads(_kiln(root, env, "registry", "list", "--role", "triage", "--json").stdout) == []
    text = _kiln(root, env, "registry", "list", "--role", "memory-embedding").stdout
    assert "task=feature-extraction" in text


def test_select_refuses_a_missing_capability(published: tuple[Path, dict[str, str]]) -> None:
    root, env = published
    ok = _kiln(root, env, "registry", "select", "memory-onnx", "--require", "embeddings")
    assert ok.returncode == 0, ok.stderr
    assert "capabilities=embeddings" in ok.stdout
    refused = _kiln(root, env, "registry", "select", "memory-onnx", "--require", "vision")
    assert refused.returncode == 4
    assert "vision" in refused.stderr and "Traceback" not in refused.stderr
