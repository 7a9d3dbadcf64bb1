"""Publishing onto a locked registry entry is refused before anything is sent: exit 2 (hash drift,
the README's table), for every backend of the run, with nothing uploaded, stored, re-pointed or
recorded for any of them. Publishing the locked bytes again stays a no-op (exit 0).

Real parts: the `kiln` CLI in a subprocess, real dist directories (the deterministic tarball and
published manifest, tests/distfactory.py), a real model store and registry files, and SeaweedFS
for S3 (the suite's `s3` fixture).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from distfactory import make_dist
from helpers import BIN
from model.test_checks import project

if TYPE_CHECKING:  # the root conftest's type; `import conftest` at run time finds another
    from conftest import S3Place

BACKENDS = ("pytorch", "onnx")


def kiln(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(BIN / "kiln"), *args], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def place_dists(root: Path, version: str, seed: int) -> None:
    """dist/tiny/<version>/<backend>/ for both backends, as `kiln build` leaves them."""
    for backend in BACKENDS:
        made = make_dist(root / "made", name="tiny", version=version, backend=backend, seed=seed)
        target = root / "dist" / "tiny" / version / backend
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(made, target)


def entries(root: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((root / "configs" / "model_registry.discovered.json").read_text())
    return {e["name"]: e for e in data["entries"]}


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` (symlinks as their targets), to compare before and after."""
    if not path.exists():
        return {}
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_symlink():
            out[rel] = f"-> {p.readlink()}".encode()
        elif p.is_file() and not p.name.startswith("."):
            out[rel] = p.read_bytes()
    return out


def objects(s3: S3Place) -> list[str]:
    listed = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix=s3.prefix)  # type: ignore[attr-defined]
    return sorted(o["Key"] for o in listed.get("Contents", []))


@pytest.mark.parametrize("store", [True, False], ids=["s3+store", "local-no-store"])
def test_locked_entry_refuses_the_whole_run_before_any_side_effect(
        tmp_path: Path, s3: S3Place, store: bool) -> None:
    root = tmp_path / "p"
    root.mkdir()
    publish = (f"publish:\n  s3: {s3.uri('{name}/{version}/{backend}/')}\n  store: "
               f"{{root: {tmp_path / 'store'}, agent: 'tiny-{{backend}}'}}\n" if store else "")
    spec = project(root, name="tiny", extra="  onnx: {}\n" + publish)
    (root / "bundles" / "m" / "cal.jsonl").write_text(
        '{"text": "a b", "labels": ["a"]}\n{"text": "b", "labels": ["b"]}\n')
    spec.write_text(spec.read_text().replace("  values: {}", "  calibration: m/cal.jsonl"))
    place_dists(root, "1.0.0", seed=1)
    first = kiln(root, "publish")
    assert first.returncode == 0, first.stderr
    locked = kiln(root, "registry", "lock", "tiny-onnx")
    assert locked.returncode == 0, locked.stderr
    expected = entries(root)["tiny-onnx"]["version_lock"]

    # The locked bytes again: allowed, and nothing changes.
    again = kiln(root, "publish")
    assert again.returncode == 0, again.stderr

    spec.write_text(spec.read_text().replace('version: "1.0.0"', 'version: "1.0.1"'))
    place_dists(root, "1.0.1", seed=2)
    before = (objects(s3), tree(tmp_path / "store"), tree(root / "published"),
              tree(root / "configs"))
    refused = kiln(root, "publish")
    assert refused.returncode == 2, (refused.returncode, refused.stderr)
    assert "tiny-onnx" in refused.stderr and "locked" in refused.stderr, refused.stderr
    assert str(expected["expected_hash"]) in refused.stderr
    # Nothing of either backend was sent: not the unlocked pytorch one, not the locked onnx one.
    assert (objects(s3), tree(tmp_path / "store"), tree(root / "published"),
            tree(root / "configs")) == before
    now = entries(root)
    assert now["tiny-pytorch"]["version"] == now["tiny-onnx"]["version"] == "1.0.0"
    assert now["tiny-onnx"]["version_lock"] == expected

    # The same refusal through doit's publish task: exit non-zero, nothing sent.
    shutil.copy(Path(__file__).resolve().parents[2] / "dodo.py", root / "dodo.py")
    ran = subprocess.run([str(BIN / "doit"), "publish:tiny"], cwd=root, capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode != 0 and "locked" in ran.stdout + ran.stderr, ran.stdout + ran.stderr
    assert (objects(s3), tree(tmp_path / "store"), tree(root / "published"),
            tree(root / "configs")) == before

    # Unlocked, the new version publishes for both backends.
    assert kiln(root, "registry", "unlock", "tiny-onnx").returncode == 0
    done = kiln(root, "publish")
    assert done.returncode == 0, done.stderr
    assert {e["version"] for e in entries(root).values()} == {"1.0.1"}
