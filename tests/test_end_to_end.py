"""The whole flow a user runs, on a real tiny model: build -> publish (file:// + store + registry)
-> registry verify/lock -> bootstrap on a "serving host" -> drift detection."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import BIN, make_project

pytestmark = pytest.mark.slow

STORE = """\
publish:
  store: {root: "${MODEL_STORE_ROOT}", agent: tiny}
registry: {roles: [triage], capabilities: [multi-label]}
"""


def test_build_publish_verify_bootstrap(tmp_path: Path, tiny_inputs: Path) -> None:
    project = make_project(tmp_path / "p", tiny_inputs)
    project.spec.write_text(project.spec.read_text() + STORE)
    store = tmp_path / "store"
    env = {**os.environ, "MODEL_STORE_ROOT": str(store)}

    def kiln(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "kiln"), *args], cwd=project.root, capture_output=True,
                              text=True, timeout=300, env={**env, **(extra or {})})

    built = kiln("build", "-j", "2")
    assert built.returncode == 0, built.stdout + built.stderr
    assert "package:tiny-pytorch" in built.stdout
    assert kiln("plan", "--check").returncode == 0
    first = kiln("publish", "--to", "local")
    assert first.returncode == 0, first.stderr
    assert "bytes uploaded" in first.stdout and "finalized" in first.stdout
    again = kiln("publish", "--to", "local")
    assert again.returncode == 0 and "unchanged, uploaded nothing" in again.stdout
    published = project.root / "published" / "tiny" / "1.0.0" / "pytorch"
    assert (published / "bundle.tar.gz").read_bytes() == (project.dist() / "bundle.tar.gz").read_bytes()
    assert (store / "tiny" / "current").resolve() == store / "tiny" / "versions" / "1.0.0"
    assert kiln("store", "current", "tiny").stdout.strip() == str(store / "tiny" / "versions" / "1.0.0")
    assert kiln("store", "verify", "tiny").stdout.startswith("ok tiny 1.0.0 checksum=")

    listed = kiln("registry", "list", "--json")
    entries = {e["name"]: e for e in json.loads(listed.stdout)}
    assert entries["tiny-pytorch"]["version"] == "1.0.0" and entries["tiny-pytorch"]["installed"]
    assert kiln("registry", "select", "tiny-pytorch", "--require", "vision").returncode == 4
    assert kiln("registry", "verify", "tiny-pytorch").returncode == 0
    assert kiln("registry", "lock", "tiny-pytorch", "--set-expected").returncode == 0

    runtime = tmp_path / "runtime"
    serve = {"MODEL_BACKEND": "pytorch", "REGISTRY_RUNTIME_DIR": str(runtime),
             "MODEL_BUNDLE_S3_URI_PYTORCH": (published / "bundle.tar.gz").as_uri()}
    boot = kiln("bootstrap", "--json", extra=serve)
    assert boot.returncode == 0, boot.stderr
    report = json.loads(boot.stdout)
    assert report["model_backend"] == "pytorch" and report["model_version"] == "1.0.0"
    model_dir = Path(report["exports"]["REGISTRY_MODEL_DIR"])
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    thresholds = json.loads(Path(report["exports"]["REGISTRY_THRESHOLDS_PATH"]).read_text())
    assert set(thresholds) == {"alpha", "beta", "gamma", "delta"}
    assert kiln("bootstrap", "--json", extra=serve).returncode == 0

    weights = store / "tiny" / "versions" / "1.0.0" / "bundle" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    stat = weights.stat()
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    drift = kiln("registry", "verify", "tiny-pytorch")
    assert drift.returncode == 2, drift.stdout + drift.stderr
    assert "changed bundle/model.safetensors" in drift.stderr
    assert kiln("store", "verify", "tiny").returncode == 2
    repaired = kiln("publish", "--to", "local", "--force")
    assert repaired.returncode == 0, repaired.stderr
    assert "(repaired from the tarball, checksum" in repaired.stdout, repaired.stdout
    assert kiln("store", "verify", "tiny").returncode == 0
