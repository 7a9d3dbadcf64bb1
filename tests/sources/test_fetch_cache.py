"""The fetch cache against a real SeaweedFS: a killed fetch resumes and converges, two processes
fetching one source move its bytes once, a shard changed remotely is one shard re-fetched, and the
cache stays inside its size bound."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelkiln.artifacts.digest import sha256_file
from modelkiln.sources.cache import FetchCache
from modelkiln.sources.fetch import ensure
from modelkiln.sources.lockfile import lock_path, read
from modelkiln.sources.locking import lock_spec

pytestmark = pytest.mark.s3
CHILD = Path(__file__).with_name("fetch_child.py")
MIB = 1 << 20


def put_shards(s3: object, run: str, sizes: dict[str, int], seed: int = 0) -> dict[str, bytes]:
    out = {}
    for i, (name, size) in enumerate(sorted(sizes.items())):
        data = (bytes([seed + i]) * 4096 + os.urandom(4096)) * (size // 8192)
        s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}{run}{name}", Body=data)  # type: ignore[attr-defined]
        out[name] = data
    return out


def locked(tmp_path: Path, uri: str, cache: FetchCache) -> Path:
    spec = tmp_path / "bundles" / "big.yaml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text("name: big\n")
    lock_spec(spec, {"source": {"checkpoint": uri}}, None, cache)
    return lock_path(spec)


def child(lock: Path, uri: str, cache: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(CHILD), str(lock), uri, str(cache)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "KILN_SOURCE_JOBS": "1"})


def test_killed_fetch_resumes_and_converges(tmp_path: Path, s3: object) -> None:
    data = put_shards(s3, "run/", {"model-00001-of-00001.safetensors": 96 * MIB})
    uri = s3.uri("run/")  # type: ignore[attr-defined]
    lock = locked(tmp_path, uri, FetchCache(tmp_path / "lock-cache"))
    cache = FetchCache(tmp_path / "cache")
    sha = next(iter(read(lock).values())).files[0].sha256  # type: ignore[union-attr]
    proc = child(lock, uri, cache.root)
    part = cache.part(sha)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if part.exists() and part.stat().st_size >= 8 * MIB:
            break
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.skip("the fetch finished before it could be killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    had = part.stat().st_size
    assert 0 < had < len(data["model-00001-of-00001.safetensors"])
    assert not cache.has(sha, 96 * MIB)
    again = child(lock, uri, cache.root)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert int(out) == 96 * MIB - had  # resumed: only the rest crossed the network
    assert sha256_file(cache.blob(sha)) == sha
    assert not part.exists()


def test_two_processes_fetch_one_source_once(tmp_path: Path, s3: object) -> None:
    put_shards(s3, "run/", {f"model-0000{i}-of-00004.safetensors": 8 * MIB for i in range(1, 5)})
    uri = s3.uri("run/")  # type: ignore[attr-defined]
    lock = locked(tmp_path, uri, FetchCache(tmp_path / "lock-cache"))
    cache = tmp_path / "cache"
    procs = [child(lock, uri, cache) for _ in range(2)]
    moved = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        moved.append(int(out))
    assert sum(moved) == 32 * MIB  # each shard crossed the network once, whoever fetched it


def test_one_shard_changed_refetches_one_shard(tmp_path: Path, s3: object) -> None:
    names = {f"model-0000{i}-of-00004.safetensors": 4 * MIB for i in range(1, 5)}
    put_shards(s3, "run-122/", names)
    cache = FetchCache(tmp_path / "cache")
    first = locked(tmp_path / "a", s3.uri("run-122/"), cache)  # type: ignore[attr-defined]
    # run-123: the same shards but the second, which training changed
    for name in names:
        body = s3.client.get_object(Bucket=s3.bucket, Key=f"{s3.prefix}run-122/{name}")["Body"].read()  # type: ignore[attr-defined]
        if name.startswith("model-00002"):
            body = body[:-1] + b"\x01"
        s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}run-123/{name}", Body=body)  # type: ignore[attr-defined]
    second = locked(tmp_path / "b", s3.uri("run-123/"), FetchCache(tmp_path / "lock-cache"))  # type: ignore[attr-defined]
    assert ensure((read(first) or {}).values(), None, None, cache) == 0  # lock kept the bytes
    moved = ensure((read(second) or {}).values(), None, None, cache)
    assert moved == 4 * MIB


def test_cache_is_bounded_least_recently_used_first(tmp_path: Path, s3: object,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    put_shards(s3, "a/", {"w.safetensors": 4 * MIB})
    put_shards(s3, "b/", {"w.safetensors": 4 * MIB}, seed=7)
    cache = FetchCache(tmp_path / "cache")
    monkeypatch.setenv("KILN_SOURCE_CACHE_MAX", "6M")
    lock_a = read(locked(tmp_path / "a", s3.uri("a/"), FetchCache(tmp_path / "x")))  # type: ignore[attr-defined]
    lock_b = read(locked(tmp_path / "b", s3.uri("b/"), FetchCache(tmp_path / "y")))  # type: ignore[attr-defined]
    (ea,), (eb,) = lock_a.values(), lock_b.values()  # type: ignore[union-attr]
    ensure([ea], None, None, cache)
    ensure([eb], None, None, cache)
    assert not cache.has(ea.files[0].sha256, ea.files[0].size)  # evicted: least recently used
    assert cache.has(eb.files[0].sha256, eb.files[0].size)
    assert not (cache.tree_dir(ea) / "w.safetensors").exists()  # a dangling link: fetch again
    assert ensure([ea], None, None, cache) == 4 * MIB
