"""Engines of several GPU architectures in one tensorrt bundle, gathered through the action cache.

Project copies stand in for CI runners (fake host facts and the fake builder; no GPU here): one
"A100" (sm80) and one "H200" (sm90) build with cache writes, on a shared file:// directory and on
the real SeaweedFS. Each trusted trt build files its engine in the cache's engine index; the
`engines` stage of every later run packs the other runners' engines of the same family beside its
own. Also: a corrupt engine blob is refused with a warning and left out, an index entry that
claims another family is refused, and an engine of another ONNX model is never listed.
"""
from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import doit.cmd_run  # noqa: F401  (now: doit binds sys.stdout at import, capsys's would close)
import pytest

from helpers import Project, make_project
from modelkiln import api
from modelkiln.artifacts.engine_key import HostFacts
from modelkiln.cache import CacheConfig
from modelkiln.runtime.engines import choose
from trt.test_plan_trt import TRT_SPEC
from trt.trt_hosts import A100, H200

pytestmark = pytest.mark.slow
Use = Callable[[HostFacts], None]
SM80, SM90 = "sm80-trt10.3.0-cuda12", "sm90-trt10.3.0-cuda12"


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """One cache for every runner of a test: a directory, or a prefix on the real SeaweedFS."""
    if request.param == "file":
        root = tmp_path / "shared-cache"
        return root.as_uri(), _FileCorruptor(root)
    s3 = request.getfixturevalue("s3")
    return s3.uri("cache"), _S3Corruptor(s3)


class _FileCorruptor:
    def __init__(self, root: Path):
        self.root = root

    def corrupt(self, key: str) -> None:
        path = self.root / key
        data = path.read_bytes()
        path.write_bytes(data[:10] + bytes([data[10] ^ 0xFF]) + data[11:])  # same size

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        (self.root / key).parent.mkdir(parents=True, exist_ok=True)
        (self.root / key).write_bytes(data)

    def keys(self, prefix: str) -> list[str]:
        base = self.root / prefix
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())


class _S3Corruptor:
    def __init__(self, s3: Any):
        self.s3 = s3
        self.base = f"{s3.prefix}cache/"

    def read(self, key: str) -> bytes:
        body = self.s3.client.get_object(Bucket=self.s3.bucket, Key=self.base + key)["Body"]
        data: bytes = body.read()
        return data

    def write(self, key: str, data: bytes) -> None:
        self.s3.client.put_object(Bucket=self.s3.bucket, Key=self.base + key, Body=data)

    def corrupt(self, key: str) -> None:
        data = self.read(key)
        self.write(key, data[:10] + bytes([data[10] ^ 0xFF]) + data[11:])

    def keys(self, prefix: str) -> list[str]:
        out = self.s3.client.list_objects_v2(Bucket=self.s3.bucket, Prefix=self.base + prefix)
        return sorted(o["Key"][len(self.base):] for o in out.get("Contents", []))


def runner(tmp_path: Path, name: str, tiny_inputs: Path, spec: str = TRT_SPEC) -> Project:
    return make_project(tmp_path / name, tiny_inputs, spec=spec.replace("{when}", "gpu-available"))


def build(project: Project, uri: str, write: bool) -> None:
    cache = CacheConfig(uri, write, "--cache")
    assert api.build([project.root / "bundles"], ["build:tiny"], cache=cache) == 0


def plan(project: Project, uri: str) -> dict[str, api.PlanRow]:
    rows = api.plan([project.root / "bundles"], cache=CacheConfig(uri, False, "--cache"))
    return {r.task: r for r in rows}


def manifest(project: Project) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((project.dist("tensorrt") / "manifest.json").read_bytes())
    return data


def engines_in(project: Project) -> list[str]:
    return sorted(f["path"] for f in manifest(project)["files"]
                  if f["path"].startswith("engines/"))


def tarball(project: Project) -> bytes:
    return (project.dist("tensorrt") / "bundle.tar.gz").read_bytes()


BOTH = ["engines/sm80/engine.json", "engines/sm80/model.plan",
        "engines/sm90/engine.json", "engines/sm90/model.plan"]


def test_two_runners_one_bundle_with_both_engines(
        tmp_path: Path, tiny_inputs: Path, shared: Any, fake_host: Use,
        fake_builder: Callable[[str], None], capsys: pytest.CaptureFixture[str]) -> None:
    uri, store = shared
    fake_builder("10.3.0")
    fake_host(A100)
    a = runner(tmp_path, "A", tiny_inputs)
    build(a, uri, write=True)
    assert engines_in(a) == ["engines/sm80/engine.json", "engines/sm80/model.plan"]
    family = manifest(a)["parity"]["engines"]["engines"]["sm80"]["family_sha256"]
    assert store.keys("engines/") == [f"engines/{family}/{SM80}.json"]

    fake_host(H200)
    b = runner(tmp_path, "B", tiny_inputs)
    build(b, uri, write=True)
    assert engines_in(b) == BOTH  # its own sm90 engine, and A's sm80 one from the cache
    gates = manifest(b)["parity"]["trtparity"]["engines"]
    assert sorted(gates) == ["sm80", "sm90"] and all(g["passed"] for g in gates.values())
    assert store.keys("engines/") == [f"engines/{family}/{SM80}.json",
                                      f"engines/{family}/{SM90}.json"]

    # a third, fresh runner (read-only): the plan knows every tensorrt task is a cache hit from
    # records and the index alone, and the build holds both engines, byte for byte B's bundle
    c = runner(tmp_path, "C", tiny_inputs)
    rows = plan(c, uri)
    assert {t: rows[t].action for t in ("trt:tiny", "engines:tiny", "trtparity:tiny",
                                        "package:tiny-tensorrt")} == dict.fromkeys(
        ("trt:tiny", "engines:tiny", "trtparity:tiny", "package:tiny-tensorrt"), "hit")
    before = store.keys("")
    build(c, uri, write=False)
    assert engines_in(c) == BOTH and tarball(c) == tarball(b)
    assert store.keys("") == before  # a read-only runner writes no index entry either
    unpacked = tmp_path / "unpacked"
    with tarfile.open(c.dist("tensorrt") / "bundle.tar.gz") as tar:
        tar.extractall(unpacked, filter="data")
    assert choose(unpacked, A100).path == unpacked / "engines/sm80/model.plan"
    assert choose(unpacked, H200).path == unpacked / "engines/sm90/model.plan"

    # runner A again: B's engine is new to it, so engines, the gate and the package rerun (and
    # nothing else); afterwards A's bundle is B's, and the next plan is a no-op
    fake_host(A100)
    rows = plan(a, uri)
    ran = {t for t, r in rows.items() if r.run}
    assert ran == {"engines:tiny", "trtparity:tiny", "package:tiny-tensorrt"}, rows
    assert rows["engines:tiny"].reasons[0].startswith("spec changed: other_runners")
    build(a, uri, write=True)
    assert engines_in(a) == BOTH and tarball(a) == tarball(b)
    assert not any(r.run for r in plan(a, uri).values())
    capsys.readouterr()


def test_a_corrupt_engine_blob_is_left_out_with_a_warning(
        tmp_path: Path, tiny_inputs: Path, shared: Any, fake_host: Use,
        fake_builder: Callable[[str], None], capsys: pytest.CaptureFixture[str]) -> None:
    uri, store = shared
    fake_builder("10.3.0")
    fake_host(A100)
    a = runner(tmp_path, "A", tiny_inputs)
    build(a, uri, write=True)
    plan_sha = manifest(a)["parity"]["engines"]["engines"]["sm80"]["plan_sha256"]
    store.corrupt(f"blobs/sha256/{plan_sha}")
    capsys.readouterr()

    fake_host(H200)
    b = runner(tmp_path, "B", tiny_inputs)
    build(b, uri, write=True)
    err = capsys.readouterr().err
    assert re.search(rf"warning: engines:tiny: the engine built on {SM80} is left out: its blob "
                     r"for engines/sm80/model.plan is corrupt or missing", err), err
    assert engines_in(b) == ["engines/sm90/engine.json", "engines/sm90/model.plan"]
    left_out = manifest(b)["parity"]["engines"]["left_out"]
    assert list(left_out) == [SM80] and "corrupt" in left_out[SM80]
    assert not any((b.root / ".kiln" / "engines").rglob("model.plan"))  # nothing kept of it


def test_engines_of_another_family_are_never_merged(
        tmp_path: Path, tiny_inputs: Path, fake_host: Use, fake_builder: Callable[[str], None],
        capsys: pytest.CaptureFixture[str]) -> None:
    uri = (tmp_path / "shared-cache").as_uri()
    store = _FileCorruptor(tmp_path / "shared-cache")
    fake_builder("10.3.0")
    # runner X: the same bundle exported at another opset, so another ONNX model (another family)
    fake_host(A100)
    x = runner(tmp_path, "X", tiny_inputs, spec=TRT_SPEC.replace("opset: 17", "opset: 18"))
    build(x, uri, write=True)
    other = manifest(x)["parity"]["engines"]["engines"]["sm80"]["family_sha256"]

    fake_host(H200)
    b = runner(tmp_path, "B", tiny_inputs)
    build(b, uri, write=True)
    family = manifest(b)["parity"]["engines"]["engines"]["sm90"]["family_sha256"]
    assert family != other
    assert engines_in(b) == ["engines/sm90/engine.json", "engines/sm90/model.plan"]

    # X's entry filed under B's family as it is: the entry itself says otherwise, refused
    entry = store.read(f"engines/{other}/{SM80}.json")
    store.write(f"engines/{family}/{SM80}.json", entry)
    capsys.readouterr()
    assert not plan(b, uri)["engines:tiny"].run
    assert "is unusable (its family or platform differs from where it is filed)" in \
        capsys.readouterr().err
    # ... and rewritten to claim B's family: fetched, but its engine.json names X's family
    store.write(f"engines/{family}/{SM80}.json",
                entry.replace(other.encode(), family.encode()))
    assert plan(b, uri)["engines:tiny"].run
    build(b, uri, write=True)
    assert re.search(rf"the engine built on {SM80} is left out: it was built from another "
                     r"model or with other settings", capsys.readouterr().err)
    assert engines_in(b) == ["engines/sm90/engine.json", "engines/sm90/model.plan"]
    assert list(manifest(b)["parity"]["engines"]["left_out"]) == [SM80]


def test_an_unreachable_cache_never_drops_engines_for_good(
        tmp_path: Path, tiny_inputs: Path, fake_host: Use, fake_builder: Callable[[str], None],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from modelkiln.graph import handles
    from modelkiln.transport import LocalDir

    def new_process() -> None:  # a cache that failed stays off for the rest of its process
        monkeypatch.setattr(handles, "_CACHES", {})

    uri = (tmp_path / "shared-cache").as_uri()
    fake_builder("10.3.0")
    fake_host(A100)
    a = runner(tmp_path, "A", tiny_inputs)
    build(a, uri, write=True)
    sm80_plan = manifest(a)["parity"]["engines"]["engines"]["sm80"]["plan_sha256"]

    # B fetches A's engine while the connection drops: left out for this build only
    real_fetch = LocalDir.fetch

    def dropping(self: LocalDir, key: str, dest: Path, *, size: int, sha256: str,
                 progress: Any = None) -> None:
        if key.endswith(sm80_plan):
            raise OSError("connection reset by peer")
        real_fetch(self, key, dest, size=size, sha256=sha256, progress=progress)

    monkeypatch.setattr(LocalDir, "fetch", dropping)
    fake_host(H200)
    b = runner(tmp_path, "B", tiny_inputs)
    new_process()
    build(b, uri, write=True)
    assert "connection reset by peer" in capsys.readouterr().err
    assert engines_in(b) == ["engines/sm90/engine.json", "engines/sm90/model.plan"]
    monkeypatch.setattr(LocalDir, "fetch", real_fetch)
    new_process()
    assert plan(b, uri)["engines:tiny"].run  # the next build tries again ...
    build(b, uri, write=True)
    assert engines_in(b) == BOTH  # ... and gets it

    # the listing itself fails: what the last build gathered stands, nothing reruns
    def unreachable(self: LocalDir, prefix: str = "") -> list[str]:
        raise OSError("no route to host")

    monkeypatch.setattr(LocalDir, "list_keys", unreachable)
    new_process()
    assert not any(r.run for r in plan(b, uri).values())
    build(b, uri, write=True)
    assert engines_in(b) == BOTH
    assert "no route to host" in capsys.readouterr().err
