"""A sharded checkpoint fetched from s3:// (a real SeaweedFS) stays sharded, and a new training
run that changed one shard rewrites one shard of the build: the others are linked from the
previous output, whatever file the fetch cache holds them in."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

import pytest

from helpers import SPEC, Project, make_project
from weights.shard_helpers import INDEX, bump_shard, shard_names, sharded_inputs

pytestmark = [pytest.mark.s3, pytest.mark.slow]


class Place(Protocol):
    """What the `s3` fixture gives: a client on the test server, a bucket and a fresh prefix."""

    client: Any
    bucket: str
    prefix: str

    def uri(self, rest: str = "") -> str: ...


def _upload(s3: Place, directory: Path, run: str) -> None:
    for f in sorted(directory.iterdir()):
        s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}{run}{f.name}",
                             Body=f.read_bytes())


def _build(p: Project) -> dict[str, Any]:
    locked = p.kiln("lock", "tiny")
    assert locked.returncode == 0, locked.stderr
    run = p.doit("weights:tiny")
    assert run.code == 0, run.output
    report: dict[str, Any] = json.loads(
        (p.root / "build/tiny/.stamps/weights.json").read_text())["report"]
    return report


def test_fetched_shards_stay_sharded_and_one_new_shard_is_one_write(
        tmp_path: Path, s3: Place, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_SOURCE_CACHE", str(tmp_path / "fetch-cache"))
    inputs = tmp_path / "inputs"
    sharded_inputs(inputs, shards=4, seed=7)
    p = make_project(tmp_path / "p", inputs, spec=SPEC)
    ckpt = tmp_path / "run"
    shutil.copytree(p.inputs / "checkpoint", ckpt)
    _upload(s3, ckpt, "run-1/")
    p.edit("checkpoint: tiny/checkpoint", f"checkpoint: {s3.uri('run-1/')}")
    first = _build(p)
    out = p.root / "build/tiny/weights"
    names = shard_names(ckpt)
    assert first["placed"] == {"copied": 4} and first["checked"] == "meta"
    for n in [*names, INDEX]:
        assert (out / n).read_bytes() == (ckpt / n).read_bytes(), n
        assert not (out / n).is_symlink() and os.stat(out / n).st_nlink == 1, n
    inodes = {n: os.stat(out / n).st_ino for n in names}

    bump_shard(ckpt / names[0])  # the next training run: one shard differs
    _upload(s3, ckpt, "run-2/")
    p.edit(s3.uri("run-1/"), s3.uri("run-2/"))
    second = _build(p)
    assert second["placed"] == {"copied": 1, "linked": 3}
    for n in names:
        assert (os.stat(out / n).st_ino == inodes[n]) == (n != names[0]), n
        assert (out / n).read_bytes() == (ckpt / n).read_bytes(), n
