"""A PR that moves a checkpoint to a new training run: `kiln changed` names the bundle and the
plan comment says what moved, both from the locks (base from git, head from the tree) with the
store unreachable."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers import SPEC, make_project
from modelkiln.sources.lockfile import LockedFile, LockEntry
from modelkiln.sources.review import line

pytestmark = pytest.mark.s3


def test_comment_line_counts_changed_shards_and_size() -> None:
    shards = [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    old = LockEntry("s3://b/runs/run-122/", "a", tuple(LockedFile(s, 10_000, f"{i}" * 64)
                                                       for i, s in enumerate(shards)))
    new = LockEntry("s3://b/runs/run-123/", "b", (old.files[0],) + tuple(
        LockedFile(s, 10_000 + 60_000 * (i == 3), "e" * 64) for i, s in enumerate(shards) if i))
    assert line("checkpoint", new, old) == \
        "checkpoint: s3://…/run-122 → run-123, 3 of 4 shards changed, +0.1 MB"
    assert line("checkpoint", old, old) is None


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root,
                   check=True, capture_output=True)


def test_changed_and_plan_comment_from_locks_without_network(
        tmp_path: Path, tiny_inputs: Path, s3: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_SOURCE_CACHE", str(tmp_path / "fc"))
    p = make_project(tmp_path / "p", tiny_inputs, spec=SPEC)
    client, bucket, prefix = s3.client, s3.bucket, s3.prefix  # type: ignore[attr-defined]
    for run in ("run-122", "run-123"):
        for f in sorted((p.inputs / "checkpoint").iterdir()):
            body = f.read_bytes()
            if run == "run-123" and f.name == "model.safetensors":
                body = body[:-1] + bytes([body[-1] ^ 1])
            client.put_object(Bucket=bucket, Key=f"{prefix}{run}/{f.name}", Body=body)
    p.edit("checkpoint: tiny/checkpoint", f"checkpoint: {s3.uri('run-122/')}")  # type: ignore[attr-defined]
    assert p.kiln("lock", "tiny").returncode == 0
    git(p.root, "init", "-q")
    git(p.root, "add", ".")
    git(p.root, "commit", "-qm", "base")
    p.edit(s3.uri("run-122/"), s3.uri("run-123/"))  # type: ignore[attr-defined]
    assert p.kiln("lock", "tiny").returncode == 0

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # no store from here on
    changed = p.kiln("changed", "HEAD")
    assert changed.returncode == 0, changed.stderr
    assert "tiny" in changed.stdout
    md = p.kiln("plan", "--markdown", "--base", "HEAD", "--cache", "off")
    assert md.returncode == 0, md.stderr
    assert "checkpoint: s3://…/run-122 → run-123, 1 of 1 shards changed, +0.0 MB" in \
        md.stdout.replace("\\", ""), md.stdout
