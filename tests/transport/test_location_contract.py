"""What every `transport.Location` promises the action cache, publishing and the runtime, checked
on a real directory and a real SeaweedFS (issue 21 item 3: the cache has no storage of its own).

- strict reads: an object over the reader's limit is refused, never cut; on disk a FIFO, a
  device, a directory or a symlink where an object should be is `Unusable`, not opened;
- checked fetches: other bytes are `DigestMismatch` (nothing left at `dest`), an absent key is
  `Missing`; both are `BadObject`, the one class the cache reads as a miss;
- first writer wins: of concurrent `IF_ABSENT` writers of one key exactly one succeeds;
- the light read path: a Bucket reads, fetches small objects and lists without importing boto3.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from modelkiln.artifacts.digest import sha256_bytes
from modelkiln.transport import (
    IF_ABSENT,
    BadObject,
    DigestMismatch,
    LocalDir,
    Location,
    Missing,
    PreconditionFailed,
    TooLarge,
    Unusable,
    open_location,
)


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "file":
        return open_location((tmp_path / "place").as_uri() + "/")
    return open_location(request.getfixturevalue("s3").uri("place/"))


def test_small_reads_are_bounded_and_refused_not_cut(place: Location) -> None:
    place.put_bytes("a/x.json", b"0123456789" * 10)
    assert place.get_small("a/x.json", 100) == b"0123456789" * 10
    with pytest.raises(TooLarge):
        place.get_small("a/x.json", 99)
    assert place.get_small("a/absent.json", 100) is None


def test_fetch_refuses_other_bytes_and_names_an_absent_key(place: Location,
                                                           tmp_path: Path) -> None:
    data = os.urandom(5000)
    place.put_bytes("blob", data, content_type="application/octet-stream")
    dest = tmp_path / "dest"
    place.fetch("blob", dest, size=len(data), sha256=sha256_bytes(data))
    assert dest.read_bytes() == data
    for size, digest in ((len(data), "0" * 64), (100, sha256_bytes(data[:100])),
                         (len(data) + 1, sha256_bytes(data + b"x"))):
        with pytest.raises(DigestMismatch):
            place.fetch("blob", tmp_path / "bad", size=size, sha256=digest)
        assert not (tmp_path / "bad").exists()
    with pytest.raises(Missing):
        place.fetch("absent", tmp_path / "gone", size=1, sha256="0" * 64)
    assert issubclass(DigestMismatch, BadObject) and issubclass(Missing, BadObject)


def test_first_writer_wins(place: Location) -> None:
    won: list[int] = []
    lost: list[int] = []

    def write(n: int) -> None:
        try:
            place.put_bytes("ac/key.json", json.dumps({"writer": n}).encode(), IF_ABSENT)
            won.append(n)
        except PreconditionFailed:
            lost.append(n)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 5, (won, lost)
    assert json.loads(place.get_small("ac/key.json") or b"") == {"writer": won[0]}


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _to_dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _directory(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize("make", [_fifo, _to_dev_zero, _directory])
def test_a_directory_refuses_what_no_writer_stored(make: Any, tmp_path: Path) -> None:
    place = LocalDir(tmp_path / "place")
    place.put_bytes("ok", b"fine")
    (tmp_path / "place" / "ac").mkdir()
    make(tmp_path / "place" / "ac" / "odd")
    with pytest.raises(Unusable):
        place.get_small("ac/odd", 100)
    with pytest.raises(Unusable):
        place.fetch("ac/odd", tmp_path / "dest", size=4, sha256=sha256_bytes(b"fine"))
    with pytest.raises(Unusable):
        place.head("ac/odd")


def test_a_directory_never_follows_a_symlink_below_its_root(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.json").write_bytes(b"{}")
    place = LocalDir(tmp_path / "place")
    place.put_bytes("ok", b"fine")
    (tmp_path / "place" / "ac").symlink_to(elsewhere)
    with pytest.raises(Unusable):
        place.get_small("ac/x.json")
    (tmp_path / "place" / "blob").symlink_to(elsewhere / "x.json")
    with pytest.raises(Unusable):
        place.fetch("blob", tmp_path / "dest", size=2, sha256=sha256_bytes(b"{}"))
    linked_root = tmp_path / "root-link"
    linked_root.symlink_to(tmp_path / "place")  # the root itself may be a link: the user chose it
    assert LocalDir(linked_root).get_small("ok") == b"fine"


def test_a_directory_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    place = LocalDir(tmp_path / "place")
    place.put_bytes("k/a", b"1")
    place.put_bytes("k/a", b"2")
    with pytest.raises(PreconditionFailed):
        place.put_bytes("k/a", b"3", IF_ABSENT)
    assert sorted(p.name for p in (tmp_path / "place" / "k").iterdir()) == ["a"]
    assert place.get_small("k/a") == b"2"


LIGHT = r"""
import json, sys
from pathlib import Path
from modelkiln.artifacts.digest import sha256_bytes
from modelkiln.transport import open_location
place = open_location(sys.argv[1])
data = place.get_small("r.json")
dest = Path(sys.argv[2])
place.fetch("blob", dest, size=5, sha256=sha256_bytes(b"12345"))
keys = place.list_keys("")
print(json.dumps({"data": data.decode() if data else None, "keys": keys,
                  "fetched": dest.read_text(), "boto3": "boto3" in sys.modules}))
"""


@pytest.mark.s3
def test_a_bucket_reads_without_boto3(s3: Any, tmp_path: Path) -> None:
    s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}c/r.json", Body=b"{}")
    s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}c/blob", Body=b"12345")
    done = subprocess.run([sys.executable, "-c", LIGHT, s3.uri("c/"), str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"data": "{}", "keys": ["blob", "r.json"],
                                       "fetched": "12345", "boto3": False}
