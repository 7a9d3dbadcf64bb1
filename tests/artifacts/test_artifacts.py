"""artifacts/: the one hash function, the stat cache, deterministic tarballs, atomic directories."""
from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from modelkiln.artifacts import manifest as mf
from modelkiln.artifacts.atomic import staged_dir, sweep_leftovers
from modelkiln.artifacts.digest import StatCache, aggregate, sha256_file
from modelkiln.artifacts.tarball import choose_level, write_tarball


def _files(root: Path) -> list[tuple[str, Path]]:
    (root / "tokenizer").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(os.urandom(300_000))
    (root / "tokenizer" / "tokenizer.json").write_text('{"vocab": "' + "ab" * 100_000 + '"}')
    (root / "config.json").write_text("{}")
    return [("model.safetensors", root / "model.safetensors"), ("config.json", root / "config.json"),
            ("tokenizer/tokenizer.json", root / "tokenizer" / "tokenizer.json")]


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    p = tmp_path / "f"
    data = os.urandom(3 * (1 << 20) + 17)
    p.write_bytes(data)
    seen: list[int] = []
    assert sha256_file(p, seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data)


def test_aggregate_is_sha256sum_text(tmp_path: Path) -> None:
    lines = "b" * 64 + "  a.txt\n" + "a" * 64 + "  b.txt\n"
    assert aggregate([("b.txt", "a" * 64), ("a.txt", "b" * 64)]) == hashlib.sha256(lines.encode()).hexdigest()


def test_stat_cache_reads_a_file_once_and_survives_rename(tmp_path: Path) -> None:
    (tmp_path / "staging").mkdir()
    p = tmp_path / "staging" / "w.bin"
    p.write_bytes(b"x" * 1000)
    old = time.time() - 10
    os.utime(p, (old, old))
    time.sleep(0.15)  # utime sets the ctime to now: let it leave the racy window
    cache = StatCache(tmp_path / "cache.json")
    first = cache.digest(p)
    assert cache.digest(p) == first and cache.hashed == [str(p)]
    # a staging directory renamed into place keeps its files' inodes and ctimes (renaming the
    # file itself sets its ctime: that is one re-hash)
    (tmp_path / "staging").rename(tmp_path / "final")
    moved = tmp_path / "final" / "w.bin"
    assert cache.digest(moved) == first and len(cache.hashed) == 1
    cache.save()
    again = StatCache(tmp_path / "cache.json")
    assert again.peek(moved) == first
    os.utime(moved, (old + 1, old + 1))  # touched, same bytes: one re-hash
    time.sleep(0.15)
    assert again.peek(moved) is None
    assert again.digest(moved) == first and len(again.hashed) == 1


def test_stat_cache_sees_a_same_size_edit_with_its_mtime_put_back(tmp_path: Path) -> None:
    p = tmp_path / "w.bin"
    p.write_bytes(b"a" * 100)
    old = time.time() - 10
    os.utime(p, (old, old))
    time.sleep(0.15)
    cache = StatCache(tmp_path / "cache.json")
    before = cache.digest(p)
    cache.save()
    mtime = p.stat().st_mtime_ns
    p.write_bytes(b"b" * 100)  # same size,
    os.utime(p, ns=(mtime, mtime))  # and the mtime put back (cp -p, rsync -t, touch -d)
    again = StatCache(tmp_path / "cache.json")
    assert again.peek(p) is None
    assert again.digest(p) != before


def test_stat_cache_sees_same_size_edit(tmp_path: Path) -> None:
    p = tmp_path / "w.bin"
    p.write_bytes(b"a" * 100)
    cache = StatCache(None)
    before = cache.digest(p)
    p.write_bytes(b"b" * 100)
    assert cache.digest(p) != before


def test_recent_files_are_not_remembered(tmp_path: Path) -> None:
    p = tmp_path / "fresh"
    p.write_bytes(b"just written")
    cache = StatCache(None)
    cache.digest(p)
    assert cache.peek(p) is None  # racy: same-tick rewrites would be invisible


def test_tarball_is_deterministic_and_readable_by_gnu_tar(tmp_path: Path) -> None:
    members = _files(tmp_path / "src")
    size_a, digest_a = write_tarball(tmp_path / "a.tar.gz", members)
    os.utime(members[0][1], (0, 0))
    _, digest_b = write_tarball(tmp_path / "b.tar.gz", list(reversed(members)))
    assert digest_a == digest_b == sha256_file(tmp_path / "a.tar.gz")
    assert size_a == (tmp_path / "a.tar.gz").stat().st_size
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "xzf", str(tmp_path / "a.tar.gz"), "-C", str(out)], check=True)
    for name, src in members:
        assert (out / name).read_bytes() == src.read_bytes()
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == ["config.json", "model.safetensors", "tokenizer",
                                       "tokenizer/tokenizer.json"]
    assert all(i.mtime == 0 and i.uid == 0 and i.gid == 0 and i.uname == "" for i in infos)
    subprocess.run(["gzip", "-t", str(tmp_path / "a.tar.gz")], check=True)


def test_level_choice_stores_random_bytes_and_compresses_text(tmp_path: Path) -> None:
    members = dict(_files(tmp_path))
    assert choose_level(members["model.safetensors"], 300_000) == 0
    assert choose_level(members["tokenizer/tokenizer.json"], 200_000) == 6


def test_staged_dir_swaps_complete_directories(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with staged_dir(final) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), staged_dir(final) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("stage failed")
    assert (final / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / ".out.abc.tmp").mkdir()
    (tmp_path / ".other.abc.tmp").mkdir()
    sweep_leftovers(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.abc.tmp", "out"]


def test_manifest_compare_tree_reports_every_kind_of_change(tmp_path: Path) -> None:
    root = tmp_path / "b"
    members = _files(root)
    files = mf.file_entries(root, [n for n, _ in members])
    manifest = mf.build(name="n", version="1", backend="pytorch", files=files, inputs={},
                        spec_digest="s", tools={})
    assert mf.compare_tree(root, manifest) == []
    (root / "config.json").write_text("{ }")
    (root / "extra").write_text("x")
    (root / "tokenizer" / "tokenizer.json").unlink()
    kinds = {(c.path, c.kind) for c in mf.compare_tree(root, manifest)}
    assert kinds == {("config.json", "changed"), ("extra", "added"),
                     ("tokenizer/tokenizer.json", "missing")}
