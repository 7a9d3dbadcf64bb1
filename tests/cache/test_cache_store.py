"""The action cache's promises over its transport Location, on a real directory and a real SeaweedFS.

- configuration precedence and the trust default (embedded cache writes, named caches read);
- records: a malformed, mismatched or path-escaping record is a miss, never a write elsewhere;
- reads: a corrupt or truncated blob is refused (size + sha256) and nothing is left in place;
- writes: blobs first, the record last and conditionally: of many concurrent writers of one key
  exactly one record is stored, and it names only blobs that exist;
- a writer killed mid-upload leaves no record that names a missing blob.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from modelkiln.artifacts.digest import sha256_file
from modelkiln.cache import (
    ActionCache,
    ActionRecord,
    BadRecord,
    BlobRef,
    blob_key,
    open_place,
    record_key,
)
from modelkiln.cache.config import resolve
from modelkiln.errors import KilnError
from modelkiln.transport import Bucket, LocalDir, Location

KEY = "ab" * 32


def _outputs(directory: Path, files: dict[str, bytes]) -> tuple[BlobRef, ...]:
    refs = []
    for rel, data in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        refs.append(BlobRef(rel, len(data), sha256_file(path)))
    return tuple(refs)


def _record(outputs: tuple[BlobRef, ...], key: str = KEY, report: dict[str, Any] | None = None
            ) -> ActionRecord:
    return ActionRecord(key=key, task="weights:x", stage="weights", outputs=outputs,
                        report=report or {}, inputs={"bundles/x/a": "0" * 64})


def _warnings() -> tuple[list[str], object]:
    seen: list[str] = []
    return seen, seen.append


# --- configuration -----------------------------------------------------------------------------

def test_config_precedence_and_trust_default(tmp_path: Path) -> None:
    embedded = resolve(tmp_path, env={})
    assert embedded.uri == (tmp_path / ".kiln" / "cache").as_uri() and embedded.write
    (tmp_path / "pyproject.toml").write_text('[tool.modelkiln]\ncache = "s3://b/p/"\n')
    named = resolve(tmp_path, env={})
    assert (named.uri, named.write, named.source) == ("s3://b/p", False, "pyproject.toml")
    assert resolve(tmp_path, env={"KILN_CACHE_WRITE": "1"}).write
    env = resolve(tmp_path, env={"KILN_CACHE_URI": "file:///c"})
    assert (env.uri, env.write, env.source) == ("file:///c", False, "KILN_CACHE_URI")
    cli = resolve(tmp_path, "s3://other/x", True, env={"KILN_CACHE_URI": "file:///c"})
    assert (cli.uri, cli.write) == ("s3://other/x", True)
    assert resolve(tmp_path, "off", env={}).uri is None
    (tmp_path / "pyproject.toml").write_text("[tool.modelkiln]\ncache = false\n")
    assert not resolve(tmp_path, env={}).enabled


@pytest.mark.parametrize("text, needle", [
    ('[tool.modelkiln]\ncache = "ftp://x"\n', "not s3://"),
    ("[tool.modelkiln]\ncache = 3\n", "must be a URI string"),
    ('[tool.modelkiln]\ncache-write = "yes"\n', "cache-write must be true or false"),
    ("[tool.modelkiln\n", "not valid TOML"),
])
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "pyproject.toml").write_text(text)
    with pytest.raises(KilnError, match=needle):
        resolve(tmp_path, env={})


def test_bad_write_env_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="KILN_CACHE_WRITE"):
        resolve(tmp_path, env={"KILN_CACHE_WRITE": "maybe"})


# --- records -----------------------------------------------------------------------------------

def test_record_round_trip_and_refusals(tmp_path: Path) -> None:
    rec = _record(_outputs(tmp_path, {"a.bin": b"aaa", "d/b.txt": b"b"}), report={"n": 1})
    assert ActionRecord.from_bytes(rec.to_bytes(), KEY) == rec
    with pytest.raises(BadRecord, match="written for key"):
        ActionRecord.from_bytes(rec.to_bytes(), "cd" * 32)
    raw = json.loads(rec.to_bytes())
    for bad in ("../escape", "/abs", "a/../../b", ""):
        raw["outputs"][0]["path"] = bad
        with pytest.raises(BadRecord, match="safe relative path"):
            ActionRecord.from_bytes(json.dumps(raw).encode(), KEY)
    raw = json.loads(rec.to_bytes())
    raw["outputs"][0]["sha256"] = "f" * 64
    with pytest.raises(BadRecord, match="outputs_digest"):
        ActionRecord.from_bytes(json.dumps(raw).encode(), KEY)
    with pytest.raises(BadRecord):
        ActionRecord.from_bytes(b"{not json", KEY)


def test_malformed_record_is_a_miss_with_a_warning(tmp_path: Path) -> None:
    storage = LocalDir(tmp_path / "c")
    storage.put_bytes(record_key(KEY), b'{"schema": 1, "key": "nope"}')
    seen, log = _warnings()
    assert ActionCache(storage, False, log).lookup(KEY) is None  # type: ignore[arg-type]
    assert seen and "unusable" in seen[0]


# --- both backends -----------------------------------------------------------------------------

@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "file":
        return open_place((tmp_path / "cache").as_uri())
    s3 = request.getfixturevalue("s3")
    return open_place(s3.uri("cache"))


def size_of(storage: Location, key: str) -> int | None:
    info = storage.head(key)
    return None if info is None else info.size


def test_save_then_restore_verified(storage: Location, tmp_path: Path) -> None:
    src = tmp_path / "out"
    rec = _record(_outputs(src, {"model.bin": os.urandom(3000), "sub/x.json": b"{}"}))
    writer = ActionCache(storage, True, print)
    assert writer.save(rec, src)
    assert not writer.save(rec, src)  # second writer of the key: the first record stays
    found = ActionCache(storage, False, print).lookup(KEY)
    assert found == rec
    dest = tmp_path / "restored"
    dest.mkdir()
    done = ActionCache(storage, False, print).restore(found, dest)
    assert done is not None and done.digests == rec.digests()
    assert (dest / "model.bin").read_bytes() == (src / "model.bin").read_bytes()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_blob_is_refused(storage: Location, tmp_path: Path, damage: str) -> None:
    src = tmp_path / "out"
    rec = _record(_outputs(src, {"model.bin": os.urandom(5000)}))
    assert ActionCache(storage, True, print).save(rec, src)
    blob = rec.outputs[0]
    good = (src / "model.bin").read_bytes()
    bad = {"flip": bytes([good[0] ^ 1]) + good[1:], "truncate": good[:100], "delete": None}[damage]
    _overwrite(storage, blob_key(blob.sha256), bad)
    seen, log = _warnings()
    reader = ActionCache(storage, False, log)  # type: ignore[arg-type]
    dest = tmp_path / "restored"
    dest.mkdir()
    assert reader.restore(rec, dest) is None
    assert any("corrupt or missing" in w for w in seen), seen
    # a writer that saw the corruption replaces the blob instead of skipping it as present
    reader.write = True
    reader.save(_record(rec.outputs, key="cd" * 32), src)
    dest2 = tmp_path / "again"
    dest2.mkdir()
    assert ActionCache(storage, False, print).restore(rec, dest2) is not None


def _overwrite(storage: Location, key: str, data: bytes | None) -> None:
    if isinstance(storage, LocalDir):
        path = storage.root / key
        if data is None:
            path.unlink()
        else:
            path.write_bytes(data)
        return
    assert isinstance(storage, Bucket)
    if data is None:
        storage.client.delete_object(Bucket=storage.bucket, Key=storage.prefix + key)
    else:
        storage.client.put_object(Bucket=storage.bucket, Key=storage.prefix + key, Body=data)


def _race_writer(uri: str, endpoint_env: dict[str, str], src: str, n: int, go: float,
                 results: multiprocessing.Queue[tuple[int, bool]]) -> None:
    os.environ.update(endpoint_env)
    storage = open_place(uri)
    rec = _record(_outputs(Path(src) / str(n), {"model.bin": f"writer {n}".encode() * 1000}),
                  report={"writer": n})
    while time.time() < go:
        pass
    results.put((n, ActionCache(storage, True, print).save(rec, Path(src) / str(n))))


def test_concurrent_writers_of_one_key_leave_one_valid_record(storage: Location,
                                                              tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    ctx = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[tuple[int, bool]] = ctx.Queue()
    go = time.time() + 1.5
    procs = [ctx.Process(target=_race_writer, args=(storage.base_uri, env, str(tmp_path), n, go, results))
             for n in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    won = [n for n, ok in (results.get(timeout=5) for _ in procs) if ok]
    assert len(won) == 1, won
    found = ActionCache(storage, False, print).lookup(KEY)
    assert found is not None and found.report == {"writer": won[0]}
    dest = tmp_path / "check"
    dest.mkdir()
    assert ActionCache(storage, False, print).restore(found, dest) is not None


# --- a writer killed mid-upload ----------------------------------------------------------------

KILLED_WRITER = r"""
import sys
from pathlib import Path
from modelkiln.cache import ActionCache, ActionRecord, BlobRef
from modelkiln.cache import open_place
from modelkiln.artifacts.digest import sha256_file
src = Path(sys.argv[2])
outs = tuple(BlobRef(p.name, p.stat().st_size, sha256_file(p)) for p in sorted(src.iterdir()))
rec = ActionRecord(key="ab" * 32, task="weights:x", stage="weights", outputs=outs)
print("start", flush=True)
ActionCache(open_place(sys.argv[1]), True, print).save(rec, src)
print("saved", flush=True)
"""


def test_killed_upload_leaves_no_record_naming_a_missing_blob(storage: Location,
                                                              tmp_path: Path) -> None:
    src = tmp_path / "out"
    src.mkdir()
    (src / "a-small.json").write_bytes(b"{}")
    big = src / "b-big.bin"
    with open(big, "wb") as f:  # large enough that the upload is in flight when the kill lands
        for _ in range(128):
            f.write(os.urandom(1 << 20))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, storage.base_uri, str(src)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "start"
    small = blob_key(sha256_file(src / "a-small.json"))
    deadline = time.time() + 30
    while size_of(storage, small) is None and time.time() < deadline:  # first blob is in: kill now
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert size_of(storage, small) == 2, "the first blob should have been written before the kill"
    # killed between the first blob and the commit point: no record, and no torn big blob
    assert storage.get_small(record_key(KEY), 1 << 20) is None
    assert size_of(storage, blob_key(sha256_file(big))) in (None, big.stat().st_size)
    assert ActionCache(storage, False, print).lookup(KEY) is None
    # a later writer completes the same key, and its record names only blobs that exist
    assert ActionCache(storage, True, print).save(
        ActionRecord(key=KEY, task="weights:x", stage="weights", outputs=tuple(
            BlobRef(p.name, p.stat().st_size, sha256_file(p)) for p in sorted(src.iterdir()))),
        src)
    rec = ActionCache(storage, False, print).lookup(KEY)
    assert rec is not None
    assert all(size_of(storage, blob_key(b.sha256)) == b.size for b in rec.outputs)
