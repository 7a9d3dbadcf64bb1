"""s3:// checkpoints on a real SeaweedFS: lock, build, no-op, drift, and no network before a stage.

A tiny seeded checkpoint is uploaded under a prefix; the spec names the prefix; `kiln lock` pins
it; the build fetches into a per-test fetch cache (KILN_SOURCE_CACHE)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import SPEC, Project, make_project

pytestmark = pytest.mark.s3


def upload(s3: object, directory: Path, prefix: str) -> None:
    client, bucket, base = s3.client, s3.bucket, s3.prefix  # type: ignore[attr-defined]
    for f in sorted(directory.iterdir()):
        client.put_object(Bucket=bucket, Key=f"{base}{prefix}{f.name}", Body=f.read_bytes())


def remote_project(tmp_path: Path, tiny_inputs: Path, s3: object, monkeypatch: pytest.MonkeyPatch,
                   run: str = "run-1/") -> Project:
    monkeypatch.setenv("KILN_SOURCE_CACHE", str(tmp_path / "fetch-cache"))
    p = make_project(tmp_path / "p", tiny_inputs, spec=SPEC)
    upload(s3, p.inputs / "checkpoint", run)
    p.edit("checkpoint: tiny/checkpoint", f"checkpoint: {s3.uri(run)}")  # type: ignore[attr-defined]
    return p


def test_unlocked_remote_source_is_a_spec_error_naming_kiln_lock(
        tmp_path: Path, tiny_inputs: Path, s3: object, monkeypatch: pytest.MonkeyPatch) -> None:
    p = remote_project(tmp_path, tiny_inputs, s3, monkeypatch)
    done = p.kiln("validate")
    assert done.returncode == 3, done.stderr
    assert "source.checkpoint" in done.stderr and "kiln lock tiny" in done.stderr
    assert "tiny.yaml:7:" in done.stderr  # the line of the key


def test_lock_build_noop_and_plan_without_network(
        tmp_path: Path, tiny_inputs: Path, s3: object, monkeypatch: pytest.MonkeyPatch) -> None:
    p = remote_project(tmp_path, tiny_inputs, s3, monkeypatch)
    cal = p.inputs / "calibration.jsonl"  # one object, not a prefix: a file source
    s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}data/cal.jsonl", Body=cal.read_bytes())  # type: ignore[attr-defined]
    p.edit("calibration: tiny/calibration.jsonl", f"calibration: {s3.uri('data/cal.jsonl')}")  # type: ignore[attr-defined]
    locked = p.kiln("lock", "tiny")
    assert locked.returncode == 0, locked.stderr
    lock = json.loads((p.root / "bundles/tiny.lock").read_text())
    entry, single = sorted(lock["sources"], key=lambda e: e["uri"] != s3.uri("run-1/"))  # type: ignore[attr-defined]
    assert [f["path"] for f in single["files"]] == ["cal.jsonl"]
    assert entry["uri"] == s3.uri("run-1/")  # type: ignore[attr-defined]
    names = {f["path"] for f in entry["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    again = p.kiln("lock", "tiny")
    assert again.returncode == 0 and "unchanged" in again.stdout
    assert p.kiln("validate").returncode == 0

    built = p.doit("build:tiny")
    assert built.code == 0, built.output
    assert {"weights:tiny", "tokenizer:tiny", "thresholds:tiny"} <= built.executed
    noop = p.doit("build:tiny")
    assert noop.code == 0 and not noop.executed, noop.output

    # no network before a stage: S3 unreachable and the fetch cache gone, plan and no-op still
    # answer from the lock (a call to the dead endpoint would fail them)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    plan = p.kiln("plan", "--check", "--cache", "off")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    noop = p.doit("build:tiny")
    assert noop.code == 0 and not noop.executed, noop.output


def test_source_changed_after_lock_is_drift_and_nothing_is_built(
        tmp_path: Path, tiny_inputs: Path, s3: object, monkeypatch: pytest.MonkeyPatch) -> None:
    p = remote_project(tmp_path, tiny_inputs, s3, monkeypatch)
    assert p.kiln("lock", "tiny").returncode == 0
    # another training run overwrites the weights under the same key; the lock still pins the old
    shard = p.inputs / "checkpoint/model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}run-1/model.safetensors",  # type: ignore[attr-defined]
                         Body=bytes(data))
    for blob in (tmp_path / "fetch-cache/blobs").glob("*/*"):  # a fresh runner: nothing cached
        os.chmod(blob, 0o644)
        blob.unlink()
    built = p.kiln("build", "--cache", "off")
    assert built.returncode == 2, built.stdout + built.stderr
    out = built.stdout + built.stderr
    assert "model.safetensors" in out and "hash drift" in out and "kiln lock" in out
    assert not (p.root / "build/tiny/weights").exists()
    assert not p.dist().exists()


def test_two_builds_sharing_a_fetch_cache_fetch_the_source_once(
        tmp_path: Path, tiny_inputs: Path, s3: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import re
    import subprocess

    from helpers import BIN

    monkeypatch.setenv("KILN_SOURCE_CACHE", str(tmp_path / "shared-cache"))
    projects = []
    for name in ("one", "two"):
        p = make_project(tmp_path / name, tiny_inputs, spec=SPEC)
        p.edit("checkpoint: tiny/checkpoint", f"checkpoint: {s3.uri('run-1/')}")  # type: ignore[attr-defined]
        projects.append(p)
    upload(s3, projects[0].inputs / "checkpoint", "run-1/")
    for p in projects:  # each locks against its own cache, so the shared one starts empty
        done = subprocess.run([str(BIN / "kiln"), "lock", "tiny"], cwd=p.root, capture_output=True,
                              text=True, env={**os.environ, "KILN_SOURCE_CACHE": str(p.root / "lc")})
        assert done.returncode == 0, done.stderr
    runs = [subprocess.Popen([str(BIN / "doit"), "weights:tiny", "tokenizer:tiny"], cwd=p.root,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for p in projects]
    outs = [r.communicate(timeout=600)[0] for r in runs]
    assert all(r.returncode == 0 for r in runs), outs
    moved = sum(int(m.replace(",", "")) for out in outs
                for m in re.findall(r"sources: ([\d,]+) bytes moved", out))
    blobs = sum(b.stat().st_size for b in (tmp_path / "shared-cache/blobs").glob("*/*"))
    assert blobs > 0 and moved == blobs  # each file both builds read crossed the network once
