"""Digests the store is handed instead of re-reading: the trust rule for `finalize(known=...)`
(stat key unchanged and well-formed, a wrong one caught by verify), publish_to_store reading no
unpacked file back, and `artifacts.copy.copy_file` (copy + sha256 in one pass)."""
from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

import modelkiln.artifacts.copy as kcopy
from modelkiln.artifacts import digest
from modelkiln.artifacts.copy import copy_file
from modelkiln.errors import DriftError
from modelkiln.store import ModelStore, read_manifest, stat_key

MiB = 1 << 20

def _data(n: int, seed: int = 0) -> bytes:
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path read through `digest.sha256_file` (the store's only way to hash a file)."""
    seen: list[str] = []
    real = digest.sha256_file

    def counting(path: str | os.PathLike[str], progress: object = None) -> str:
        seen.append(os.path.abspath(path))
        return real(path)

    monkeypatch.setattr(digest, "sha256_file", counting)
    return seen


# ------------------------------------------------------------------------------------ copy_file
@pytest.mark.parametrize("size", [0, 1, 4095, 4096, digest.CHUNK - 1, digest.CHUNK,
                                  digest.CHUNK + 1, 9 * digest.CHUNK + 12345])
@pytest.mark.parametrize("durable", [False, True])
def test_copy_file_digest_size_and_bytes(tmp_path: Path, size: int, durable: bool) -> None:
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    data = _data(size, size)
    src.write_bytes(data)
    got = copy_file(src, dst, durable=durable)
    assert got == (size, digest.sha256_file(src)) == (size, hashlib.sha256(data).hexdigest())
    assert dst.read_bytes() == data


def test_copy_file_background_flushes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A durable copy past FLUSH_EVERY fdatasyncs on a helper thread while it goes on copying."""
    monkeypatch.setattr(kcopy, "FLUSH_EVERY", MiB)
    calls: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    data = _data(12 * MiB + 7, 3)
    src.write_bytes(data)
    assert copy_file(src, dst, durable=True) == (len(data), hashlib.sha256(data).hexdigest())
    assert dst.read_bytes() == data and calls


def test_copy_file_keeps_mode_never_overwrites_and_refuses_non_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"abc")
    os.chmod(src, 0o640)
    copy_file(src, tmp_path / "a")
    assert (os.stat(tmp_path / "a").st_mode & 0o777) == 0o640 & ~_umask()
    (tmp_path / "b").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        copy_file(src, tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == b"keep"
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    with pytest.raises(FileExistsError):  # O_NOFOLLOW|O_EXCL: never writes through a link
        copy_file(src, tmp_path / "link")
    assert not (tmp_path / "elsewhere").exists()
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError, match="not a regular file"):
        copy_file(tmp_path / "dir", tmp_path / "c")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="not a regular file"):
        copy_file(tmp_path / "fifo", tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_copy_file_failure_removes_the_partial_copy(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(_data(3 * digest.CHUNK))
    real = os.write
    count = [0]

    def failing(fd: int, data: object) -> int:
        if isinstance(data, memoryview):
            count[0] += 1
            if count[0] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "write", failing)
    with pytest.raises(OSError, match="No space"):
        copy_file(src, dst, durable=True)
    assert not dst.exists()
def test_supplied_digests_trust_rule(tmp_path: Path, reads: list[str]) -> None:
    """Stale stat key or malformed digest: re-read. Well-formed but wrong for an untouched file:
    recorded as given (finalize cannot know without reading), then caught by verify."""
    store = ModelStore(tmp_path / "s")
    with store.stage_new("scout", "1") as tmp:
        for name in ("stale", "malformed", "wrong", "right"):
            (tmp / name).write_bytes(name.encode() * 1000)
        key = {n: stat_key(os.stat(tmp / n)) for n in ("stale", "malformed", "wrong", "right")}
        (tmp / "stale").write_bytes(b"rewritten, another size")
    real = {n: digest.sha256_file(tmp / n) for n in ("malformed", "wrong", "right")}
    reads.clear()
    known = {"stale": (key["stale"], "0" * 64), "malformed": (key["malformed"], real["malformed"].upper()),
             "wrong": (key["wrong"], "f" * 64), "right": (key["right"], real["right"])}
    info = store.finalize("scout", "1", known=known)
    assert sorted(Path(p).name for p in reads) == ["malformed", "stale"]
    files = read_manifest(info.path).files
    assert files["malformed"][1] == real["malformed"] and files["right"][1] == real["right"]
    assert files["stale"][1] == hashlib.sha256(b"rewritten, another size").hexdigest()
    assert files["wrong"][1] == "f" * 64
    with pytest.raises(DriftError) as err:
        store.verify("scout", "1")
    assert [(c.path, c.kind) for c in err.value.changes] == [("wrong", "changed")]



def test_publish_to_store_reads_no_unpacked_file_back(tmp_path: Path, reads: list[str]) -> None:
    """safe_extract hashes each file as it writes it and checks it against the bundle manifest;
    those digests go to finalize, which reads back only the bundle's own small manifest.json."""
    from distfactory import make_dist
    from modelkiln.publish.store import publish_to_store

    dist = make_dist(tmp_path, version="1", seed=1, weights=300_000)
    result = publish_to_store(dist, tmp_path / "s", "registry", "1", {})
    staged = [p for p in reads if "/versions/1.tmp/" in p]
    assert [p.split("/versions/1.tmp/")[1] for p in staged] == ["bundle/manifest.json"]
    assert len(read_manifest(result.path).files) >= 3
    reads.clear()
    ModelStore(tmp_path / "s").verify("registry", "1")  # the recorded digests are the real ones
    assert len(reads) == len(read_manifest(result.path).files)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
