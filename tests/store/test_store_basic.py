"""The store's lifecycle on real directories: stage, finalize, current, list, rollback, prune, pins,
legacy aliases, STRICT_MODEL_STORE, immutability of versions."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from modelkiln.artifacts.digest import aggregate, sha256_file
from modelkiln.errors import ConflictError, StoreError
from modelkiln.store import ModelStore, VersionInfo
from store.store_helpers import debris


def put(store: ModelStore, version: str, files: dict[str, bytes], agent: str = "scout",
        metadata: Mapping[str, Any] | None = None) -> VersionInfo:
    with store.stage_new(agent, version) as tmp:
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
    return store.finalize(agent, version, metadata)


def test_seed_quick_start_layout_and_manifest(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    info = put(store, "v2025-10-28", {"weights.bin": b"w" * 1000, "tok/vocab.txt": b"a\nb\n"},
               metadata={"commit": "abc123", "author": "ci"})
    agent = tmp_path / "scout"
    assert os.readlink(agent / "current") == "versions/v2025-10-28"
    assert store.get_current("scout") == agent / "versions" / "v2025-10-28"
    manifest = json.loads((agent / "versions" / "v2025-10-28" / "manifest.json").read_bytes())
    assert manifest["version"] == "v2025-10-28"
    assert manifest["metadata"] == {"commit": "abc123", "author": "ci"}
    expected = aggregate([("weights.bin", sha256_file(agent / "versions/v2025-10-28/weights.bin")),
                          ("tok/vocab.txt", sha256_file(agent / "versions/v2025-10-28/tok/vocab.txt"))])
    assert manifest["checksum"] == expected == info.checksum
    assert debris(agent) == []


def test_checksum_is_deterministic_and_content_only(tmp_path: Path) -> None:
    a = put(ModelStore(tmp_path / "a"), "1", {"x": b"1", "d/y": b"2"}, metadata={"n": 1})
    b = put(ModelStore(tmp_path / "b"), "1", {"d/y": b"2", "x": b"1"}, metadata={"n": 2})
    c = put(ModelStore(tmp_path / "c"), "1", {"x": b"1", "d/y": b"3"})
    assert a.checksum == b.checksum != c.checksum


def test_same_bytes_again_is_noop_and_keeps_current(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    put(store, "1", {"x": b"1"})
    put(store, "2", {"x": b"2"})
    again = put(store, "1", {"x": b"1"})
    assert again.noop and store.current_version("scout") == "2"


def test_different_bytes_under_existing_version_conflict(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    first = put(store, "1", {"x": b"1"})
    with pytest.raises(ConflictError) as err:
        put(store, "1", {"x": b"other"})
    assert err.value.exit_code == 5 and err.value.existing == first.checksum
    assert (tmp_path / "scout/versions/1/x").read_bytes() == b"1"
    assert debris(tmp_path / "scout") == []


def test_failed_staging_leaves_nothing_and_releases_lock(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(RuntimeError), store.stage_new("scout", "1") as tmp:
        (tmp / "x").write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert not (tmp_path / "scout/versions/1.tmp").exists()
    assert put(ModelStore(tmp_path), "1", {"x": b"1"}).version == "1"  # lock was released


def test_finalize_inside_the_with_block_also_works(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with store.stage_new("scout", "1") as tmp:
        (tmp / "x").write_bytes(b"1")
        store.finalize("scout", "1")
    assert store.current_version("scout") == "1"


def test_leftover_staging_from_a_dead_writer_is_cleaned(tmp_path: Path) -> None:
    (tmp_path / "scout/versions/1.tmp").mkdir(parents=True)
    (tmp_path / "scout/versions/1.tmp/junk").write_bytes(b"partial")
    info = put(ModelStore(tmp_path), "1", {"x": b"1"})
    assert info.files == 1 and not (tmp_path / "scout/versions/1/junk").exists()


def test_finalize_refuses_unstaged_symlinks_and_reserved_manifest(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(StoreError, match="not staged"):
        store.finalize("scout", "1")
    with store.stage_new("scout", "1") as tmp:
        os.symlink("/etc/passwd", tmp / "link")
    with pytest.raises(StoreError, match="symlink"):
        store.finalize("scout", "1")
    with pytest.raises(StoreError, match="store's own manifest"):
        put(store, "2", {"manifest.json": b"{}"})
    assert store.list_versions("scout") == []


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "x.tmp", "current", "", "a" * 200])
def test_bad_names_refused(tmp_path: Path, name: str) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(StoreError), store.stage_new("scout", name):
        pass
    with pytest.raises(StoreError):
        store.get_current(name)


def test_list_rollback_prune_and_pins(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for v in ("a", "b", "c", "d", "e"):
        put(store, v, {"x": v.encode()})
    assert [i.version for i in store.list_versions("scout")] == ["a", "b", "c", "d", "e"]
    assert store.rollback("scout").version == "d"  # the one finalized before the current one
    assert store.current_version("scout") == "d"
    store.pin("scout", "a", "registry lock test")
    removed = store.prune("scout", keep=1)
    assert sorted(removed) == ["b", "c"]  # e is newest, d current, a pinned
    assert {i.version for i in store.list_versions("scout")} == {"a", "d", "e"}
    store.unpin("scout", "a")
    assert store.prune("scout", keep=1) == ["a"]
    assert store.rollback("scout", "e").current
    with pytest.raises(StoreError, match="no complete version"):
        store.rollback("scout", "zzz")
    assert debris(tmp_path / "scout") == []


def test_rollback_refuses_a_drifted_target(tmp_path: Path) -> None:
    from modelkiln.errors import DriftError

    store = ModelStore(tmp_path)
    put(store, "a", {"x": b"a"})
    put(store, "b", {"x": b"b"})
    (tmp_path / "scout/versions/a/x").write_bytes(b"tampered")
    with pytest.raises(DriftError):
        store.rollback("scout")
    assert store.current_version("scout") == "b"


def test_legacy_alias_is_read_never_written(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    put(store, "1", {"x": b"1"}, agent="synthesizer")
    os.symlink("synthesizer", tmp_path / "news-cleaner-agent")
    assert store.get_current("news-cleaner-agent") == (tmp_path / "synthesizer/versions/1").resolve()
    assert store.verify("news-cleaner-agent").version == "1"
    assert store.agents() == {"news-cleaner-agent": "synthesizer", "synthesizer": None}
    with pytest.raises(StoreError, match="legacy alias"):
        put(store, "2", {"x": b"2"}, agent="news-cleaner-agent")
    with pytest.raises(StoreError, match="legacy alias"):
        store.prune("news-cleaner-agent", keep=0)
    assert os.path.islink(tmp_path / "news-cleaner-agent")


def test_missing_store_is_empty_unless_strict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope"
    monkeypatch.delenv("STRICT_MODEL_STORE", raising=False)
    assert ModelStore(missing).get_current("scout") is None
    assert ModelStore(missing).list_versions("scout") == []
    monkeypatch.setenv("STRICT_MODEL_STORE", "1")
    with pytest.raises(StoreError, match="STRICT_MODEL_STORE"):
        ModelStore(missing).get_current("scout")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    with pytest.raises(StoreError, match="STRICT_MODEL_STORE"):
        ModelStore(not_a_dir).list_versions("scout")
    assert ModelStore(missing, strict=False).get_current("scout") is None


def test_broken_current_is_an_error_in_both_modes(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, strict=False)
    put(store, "1", {"x": b"1"})
    os.replace(tmp_path / "scout/current", tmp_path / "old")
    os.symlink("versions/gone", tmp_path / "scout/current")
    with pytest.raises(StoreError, match="rollback"):
        store.get_current("scout")
    store.rollback("scout", "1")
    assert store.current_version("scout") == "1"


def test_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_STORE_ROOT", str(tmp_path))
    put(ModelStore(), "1", {"x": b"1"})
    assert ModelStore().current_version("scout") == "1"
    monkeypatch.delenv("MODEL_STORE_ROOT")
    with pytest.raises(StoreError, match="MODEL_STORE_ROOT"):
        ModelStore()
