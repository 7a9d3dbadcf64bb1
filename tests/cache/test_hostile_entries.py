"""Hostile records and blobs in a file:// cache and a bucket (issue 19, items 7 and 8).

Every case goes through a fresh child process with a wall-clock timeout and a file-size limit,
so a read that would hang (a FIFO) or fill the disk (/dev/zero) fails the test instead of
hanging it or filling the disk. What each child must do: look the key up and restore the
record into an empty directory, answering "miss" (with a warning) or "hit", and never raise.

- names: `..`, absolute, control characters, a name that is the parent directory of another
  (`x` beside `x/y`), a size edited without the record's own digest;
- entries: a FIFO, a symlink to /dev/zero or to a host file, a character device, a directory,
  a record nested a million levels deep;
- one unusable record is one miss: the next key in the same process still hits;
- a bucket: a blob larger than its record says is not downloaded past the record's size, and a
  record over the read limit is refused, not cut to a prefix.
"""
from __future__ import annotations

import json
import os
import resource
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelkiln.artifacts.digest import sha256_bytes
from modelkiln.cache import ActionCache, ActionRecord, BlobRef, blob_key, open_place, record_key
from modelkiln.transport import BadObject, LocalDir

KEY, OTHER = "ab" * 32, "cd" * 32
LIMIT_BYTES = 64 << 20  # the child may not write a file larger than this

CHILD = r"""
import json, sys
from pathlib import Path
from modelkiln.cache import ActionCache
from modelkiln.cache import open_place

uri, dest, keys = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
seen = []
cache = ActionCache(open_place(uri), False, seen.append)
answers = []
for n, key in enumerate(keys):
    record = cache.lookup(key)
    if record is None:
        answers.append("miss")
        continue
    (dest / str(n)).mkdir(parents=True)
    done = cache.restore(record, dest / str(n))
    answers.append("hit" if done is not None else "miss")
print(json.dumps({"answers": answers, "warnings": seen, "broken": cache.broken}))
"""


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))


def ask(uri: str, dest: Path, *keys: str) -> dict[str, Any]:
    """Look `keys` up and restore them in a child process; its answers and warnings."""
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, uri, str(dest), *keys],
                              capture_output=True, text=True, timeout=60,
                              preexec_fn=_limit_file_size)
    except subprocess.TimeoutExpired:
        pytest.fail("the cache read hung (killed after 60 s)")
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-3000:]}"
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def record_bytes(outputs: list[dict[str, Any]], key: str = KEY, **extra: Any) -> bytes:
    """A record in the format this modelkiln writes, with `outputs` as given (unchecked)."""
    good = ActionRecord(key=key, task="weights:x", stage="weights",
                        outputs=(BlobRef("a", 1, "0" * 64),))
    raw = json.loads(good.to_bytes())
    raw["outputs"] = outputs
    digest = "outputs_digest" if "outputs_digest" in raw else "outputs_aggregate"
    raw[digest] = _self_digest(outputs, digest)
    raw.update(extra)
    return json.dumps(raw).encode()


def _self_digest(outputs: list[dict[str, Any]], field: str) -> str:
    """The record's own digest of `outputs`, computed as the modelkiln under test does."""
    refs = tuple(BlobRef(o["path"], o["size"], o["sha256"]) for o in outputs)
    rec = ActionRecord(key=KEY, task="t", stage="s", outputs=refs)
    return str(getattr(rec, field))


def out(path: str, data: bytes) -> dict[str, Any]:
    return {"path": path, "size": len(data), "sha256": sha256_bytes(data)}


@pytest.fixture
def local(tmp_path: Path) -> LocalDir:
    return LocalDir(tmp_path / "cache")


def put_blob(storage: LocalDir, data: bytes) -> None:
    storage.put_bytes(blob_key(sha256_bytes(data)), data)


# --- names -------------------------------------------------------------------------------------

@pytest.mark.parametrize("names", [
    ["../escape"], ["/abs/path"], ["a/../../b"], ["tab\there"], ["new\nline"], ["esc\x1b[31m"],
    ["x", "x/y"], ["d/x", "d/x/y/z"],
], ids=["dotdot", "absolute", "inner-dotdot", "tab", "newline", "escape", "prefix", "deep-prefix"])
def test_unsafe_output_names_are_a_miss(local: LocalDir, tmp_path: Path,
                                        names: list[str]) -> None:
    data = b"payload"
    put_blob(local, data)
    local.put_bytes(record_key(KEY), record_bytes([out(n, data) for n in names]))
    answer = ask(local.base_uri, tmp_path / "dest", KEY)
    assert answer["answers"] == ["miss"] and answer["warnings"], answer
    assert not answer["broken"]
    assert not (tmp_path / "escape").exists() and not Path("/abs/path").exists()


def test_a_size_edited_without_the_record_digest_is_a_miss(local: LocalDir,
                                                           tmp_path: Path) -> None:
    """The record's digest of its own output list covers every field of every output."""
    data = b"payload"
    put_blob(local, data)
    raw = json.loads(record_bytes([out("a", data)]))
    raw["outputs"][0]["size"] = 1 << 40
    local.put_bytes(record_key(KEY), json.dumps(raw).encode())
    with pytest.raises(ValueError):
        ActionRecord.from_bytes(json.dumps(raw).encode(), KEY)


def test_output_list_digest_is_unambiguous() -> None:
    """Two different output lists never share the record's digest (joined `sha  path` lines did:
    a name holding a newline and a second line reads as two outputs)."""
    d1, d2 = "1" * 64, "2" * 64
    one = [{"path": f"x\n{d2}  y", "size": 1, "sha256": d1}]
    two = [{"path": "x", "size": 1, "sha256": d1}, {"path": "y", "size": 1, "sha256": d2}]
    field = "outputs_digest" if hasattr(ActionRecord, "outputs_digest") else "outputs_aggregate"
    assert _self_digest(one, field) != _self_digest(two, field)


# --- entries that are not regular files --------------------------------------------------------

def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _to_dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _char_device(path: Path) -> None:
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # what /dev/zero is
    except PermissionError:
        pytest.skip("creating a device node needs root")


def _directory(path: Path) -> None:
    path.mkdir()


ODD: dict[str, Callable[[Path], None]] = {"fifo": _fifo, "symlink-dev-zero": _to_dev_zero,
                                          "char-device": _char_device, "directory": _directory}


@pytest.mark.parametrize("kind", sorted(ODD))
def test_odd_record_entry_is_one_miss(local: LocalDir, tmp_path: Path, kind: str) -> None:
    data = b"payload"
    put_blob(local, data)
    local.put_bytes(record_key(OTHER), record_bytes([out("a", data)], key=OTHER))
    (local.root / "ac").mkdir(parents=True, exist_ok=True)
    ODD[kind](local.root / record_key(KEY))
    answer = ask(local.base_uri, tmp_path / "dest", KEY, OTHER)
    assert answer["answers"] == ["miss", "hit"], answer  # the next key is still looked up
    assert not answer["broken"], answer


@pytest.mark.parametrize("kind", sorted(ODD))
def test_odd_blob_entry_is_one_miss(local: LocalDir, tmp_path: Path, kind: str) -> None:
    data, good = b"the record promises these bytes", b"another output"
    put_blob(local, good)
    local.put_bytes(record_key(KEY), record_bytes([out("a", data)]))
    local.put_bytes(record_key(OTHER), record_bytes([out("b", good)], key=OTHER))
    target = local.root / blob_key(sha256_bytes(data))
    target.parent.mkdir(parents=True, exist_ok=True)
    ODD[kind](target)
    answer = ask(local.base_uri, tmp_path / "dest", KEY, OTHER)
    assert answer["answers"] == ["miss", "hit"], answer
    assert not answer["broken"], answer
    assert any("corrupt or missing" in w for w in answer["warnings"]), answer


def test_a_symlinked_host_file_is_not_restored(local: LocalDir, tmp_path: Path) -> None:
    """A blob that is a symlink to a host file whose digest the record names: never followed."""
    host = tmp_path / "host-secret"
    host.write_bytes(b"a host file's bytes")
    local.put_bytes(record_key(KEY), record_bytes([out("secret", host.read_bytes())]))
    target = local.root / blob_key(sha256_bytes(host.read_bytes()))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(host)
    answer = ask(local.base_uri, tmp_path / "dest", KEY)
    assert answer["answers"] == ["miss"], answer
    assert not list((tmp_path / "dest").rglob("secret"))


def test_a_symlinked_cache_directory_is_not_followed(local: LocalDir, tmp_path: Path) -> None:
    """`ac/` itself a link to somewhere else: no record below it is read."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = b"payload"
    put_blob(local, data)
    (elsewhere / f"{KEY}.json").write_bytes(record_bytes([out("a", data)]))
    (local.root / "ac").symlink_to(elsewhere)
    assert ask(local.base_uri, tmp_path / "dest", KEY)["answers"] == ["miss"]


@pytest.mark.parametrize("depth", [100, 1_000_000])
def test_deeply_nested_record_is_a_miss(local: LocalDir, tmp_path: Path, depth: int) -> None:
    data = b"payload"
    put_blob(local, data)
    raw = record_bytes([out("a", data)])
    nested = b"[" * depth + b"]" * depth
    local.put_bytes(record_key(KEY), raw.replace(b'"report": {}', b'"report": {"x": ' + nested + b"}"))
    local.put_bytes(record_key(OTHER), record_bytes([out("a", data)], key=OTHER))
    answer = ask(local.base_uri, tmp_path / "dest", KEY, OTHER)
    assert answer["answers"] == ["miss", "hit"], answer
    assert not answer["broken"]


# --- a bucket ----------------------------------------------------------------------------------

@pytest.mark.s3
def test_a_bucket_blob_larger_than_its_record_is_not_downloaded(s3: Any, tmp_path: Path) -> None:
    storage = open_place(s3.uri("cache"))
    promised = b"x" * 1000
    huge = os.urandom(12 << 20)
    storage.put_bytes(blob_key(sha256_bytes(promised)), huge)
    dest = tmp_path / "blob"
    with pytest.raises(BadObject):
        storage.fetch(blob_key(sha256_bytes(promised)), dest, size=len(promised),
                      sha256=sha256_bytes(promised))
    assert not dest.exists() or dest.stat().st_size <= len(promised) + (1 << 20)


@pytest.mark.parametrize("medium", ["file", pytest.param("s3", marks=pytest.mark.s3)])
def test_an_entry_over_the_read_limit_is_refused_not_cut(medium: str, tmp_path: Path,
                                                         request: pytest.FixtureRequest) -> None:
    if medium == "s3":
        storage: Any = open_place(request.getfixturevalue("s3").uri("cache"))
    else:
        storage = open_place((tmp_path / "cache").as_uri())
    storage.put_bytes("index/x.json", b"0123456789" * 10)
    seen: list[str] = []
    cache = ActionCache(storage, False, seen.append)
    assert cache.read_small("index/x.json", 50) is None
    assert seen and not cache.broken
    assert cache.read_small("index/x.json", 100) == b"0123456789" * 10
