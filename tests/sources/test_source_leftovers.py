"""Remote sources, the leftovers of issue 23: drift through plain doit exits 2, a converted bundle
follows the fetch cache when it moves, and a long-running process sees an edited lock."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from helpers import SPEC, Project, make_project
from modelkiln.sources import pins
from modelkiln.sources.cache import FetchCache
from modelkiln.sources.lockfile import LockedFile, LockEntry, write


def remote_project(tmp_path: Path, tiny_inputs: Path, s3: Any, monkeypatch: pytest.MonkeyPatch,
                   cache: Path) -> Project:
    monkeypatch.setenv("KILN_SOURCE_CACHE", str(cache))
    p = make_project(tmp_path / "p", tiny_inputs, spec=SPEC)
    for f in sorted((p.inputs / "checkpoint").iterdir()):
        s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}run-1/{f.name}", Body=f.read_bytes())
    p.edit("checkpoint: tiny/checkpoint", f"checkpoint: {s3.uri('run-1/')}")
    return p


def blob_names(cache: Path) -> set[str]:
    return {b.name for b in (cache / "blobs").glob("*/*")}


@pytest.mark.s3
def test_drift_exits_2_through_plain_doit_as_through_kiln_build(
        tmp_path: Path, tiny_inputs: Path, s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    p = remote_project(tmp_path, tiny_inputs, s3, monkeypatch, tmp_path / "fetch-cache")
    assert p.kiln("lock", "tiny").returncode == 0
    shard = p.inputs / "checkpoint/model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # rewritten under the same key after the lock
    s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}run-1/model.safetensors", Body=bytes(data))
    shutil.rmtree(tmp_path / "fetch-cache/blobs")  # a fresh runner: nothing cached
    built = p.doit("build:tiny")
    assert built.code == 2, built.output  # doit's own status, as `kiln build` exits
    assert "model.safetensors" in built.output and "hash drift" in built.output
    assert not (p.root / "build/tiny/weights").exists()


@pytest.mark.s3
def test_a_moved_fetch_cache_is_followed_not_kept(
        tmp_path: Path, tiny_inputs: Path, s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    first = tmp_path / "cache-a"
    p = remote_project(tmp_path, tiny_inputs, s3, monkeypatch, first)
    assert p.kiln("lock", "tiny").returncode == 0
    built = p.doit("weights:tiny")
    assert built.code == 0 and "weights:tiny" in built.executed, built.output

    # the cache moves (a runner's cache restored elsewhere): a no-op stays a no-op, since stamps
    # and cache keys name a remote file by its URI, not by where the cache happened to be
    moved = tmp_path / "cache-b"
    os.rename(first, moved)
    monkeypatch.setenv("KILN_SOURCE_CACHE", str(moved))
    noop = p.doit("weights:tiny")
    assert noop.code == 0 and not noop.executed, noop.output

    # another cache while the old one still exists: the converted bundle kept on disk must not
    # keep reading the old one; a forced run fetches into the new cache and builds from it
    fresh = tmp_path / "cache-c"
    monkeypatch.setenv("KILN_SOURCE_CACHE", str(fresh))
    forced = p.kiln("build", "--force", "-t", "weights:tiny", "--cache", "off")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    weights = [f for f in pins_of(p) if f.path == "model.safetensors"]
    assert weights and weights[0].sha256 in blob_names(fresh)


def pins_of(p: Project) -> tuple[LockedFile, ...]:
    from modelkiln.sources.lockfile import read

    found = read(p.root / "bundles/tiny.lock") or {}
    return tuple(f for e in found.values() for f in e.files)


def test_an_edited_lock_is_seen_by_a_process_that_read_it_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_SOURCE_CACHE", str(tmp_path / "cache"))
    spec = tmp_path / "bundles/x.yaml"
    spec.parent.mkdir()
    spec.write_text("name: x\n")
    uri = "s3://b/run/"

    def lock(sha: str) -> Path:
        entry = LockEntry(uri, "sha256:" + sha * 64, (LockedFile("w.safetensors", 3, sha * 64, "etag:x"),))
        write(spec.with_suffix(".lock"), [entry])
        return FetchCache().tree_dir(entry) / "w.safetensors"

    old = lock("1")
    pins.register_lock(spec)  # a kiln ui plans the bundle
    assert pins.digest(old) == "1" * 64
    new = lock("2")  # `kiln lock` in another terminal, or a pull
    pins.register_lock(spec)
    assert pins.digest(new) == "2" * 64
    assert pins.entries_of([new]) == {uri: [LockedFile("w.safetensors", 3, "2" * 64, "etag:x")]}


@pytest.mark.s3
def test_lock_reads_only_metadata_where_the_store_gives_sha256(tmp_path: Path, s3: Any) -> None:
    """SeaweedFS returns ChecksumSHA256 for an object PUT with a SHA-256 checksum: that object is
    locked from its HEAD, never read; one uploaded without a checksum is read through a hash."""
    import hashlib

    from modelkiln.sources.locking import lock_spec

    summed, plain = os.urandom(3 << 20), os.urandom(2 << 20)
    s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}ck/summed.safetensors", Body=summed,
                         ChecksumAlgorithm="SHA256")
    s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}ck/plain.safetensors", Body=plain)
    spec = tmp_path / "bundles/big.yaml"
    spec.parent.mkdir()
    spec.write_text("name: big\n")
    cache = FetchCache(tmp_path / "cache")
    done = lock_spec(spec, {"source": {"checkpoint": s3.uri("ck/")}}, None, cache)
    files = {f.path: f for e in done.entries for f in e.files}
    want = {"summed.safetensors": summed, "plain.safetensors": plain}
    assert {p: f.sha256 for p, f in files.items()} == \
        {p: hashlib.sha256(b).hexdigest() for p, b in want.items()}
    assert blob_names(tmp_path / "cache") == {files["plain.safetensors"].sha256}
