"""Drift: every single mutation of a published version makes `verify` raise DriftError (exit 2)
naming what changed; a change of mtimes alone does not. Byte edits keep size and mtime, so a verify
that trusted a stat cache instead of re-reading the bytes would miss them."""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from distfactory import make_dist
from modelkiln.errors import DriftError
from modelkiln.publish.store import publish_to_store
from modelkiln.store import ModelStore
from store.store_helpers import AGENT, copy_store

VERSION = "1.0.0"
WEIGHTS = "bundle/model.safetensors"


def _keep_mtime(path: Path, edit: Callable[[Path], None]) -> None:
    st = path.stat()
    edit(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _flip(offset: str) -> Callable[[Path], str]:
    def mutate(v: Path) -> str:
        def edit(p: Path) -> None:
            with open(p, "r+b") as f:
                size = os.fstat(f.fileno()).st_size
                at = {"first": 0, "middle": size // 2, "last": size - 1}[offset]
                f.seek(at)
                byte = f.read(1)
                f.seek(at)
                f.write(bytes([byte[0] ^ 0x01]))
        _keep_mtime(v / WEIGHTS, edit)
        return WEIGHTS
    return mutate


def _truncate(v: Path) -> str:
    _keep_mtime(v / WEIGHTS, lambda p: os.truncate(p, p.stat().st_size // 2))
    return WEIGHTS


def _truncate_to_zero(v: Path) -> str:
    os.truncate(v / "bundle/thresholds.json", 0)
    return "bundle/thresholds.json"


def _append(v: Path) -> str:
    with open(v / "bundle/thresholds.json", "ab") as f:
        f.write(b" ")
    return "bundle/thresholds.json"


def _delete(v: Path) -> str:
    (v / "bundle/tokenizer/tokenizer.json").unlink()
    return "bundle/tokenizer/tokenizer.json"


def _add(v: Path) -> str:
    (v / "bundle/extra.bin").write_bytes(b"x")
    return "bundle/extra.bin"


def _add_at_root(v: Path) -> str:
    (v / "notes.txt").write_bytes(b"x")
    return "notes.txt"


def _add_in_new_dir(v: Path) -> str:
    (v / "bundle/new").mkdir()
    (v / "bundle/new/file").write_bytes(b"")
    return "bundle/new/file"


def _symlink_to_identical_copy(v: Path) -> str:
    copy = v.parent.parent / "copy-of-config.json"
    shutil.copyfile(v / "bundle/config.json", copy)
    (v / "bundle/config.json").unlink()
    os.symlink(copy, v / "bundle/config.json")
    return "bundle/config.json"


def _dir_to_symlink(v: Path) -> str:
    copy = v.parent.parent / "copy-of-tokenizer"
    shutil.copytree(v / "bundle/tokenizer", copy)
    shutil.rmtree(v / "bundle/tokenizer")
    os.symlink(copy, v / "bundle/tokenizer")
    return "bundle/tokenizer"


def _edit_store_manifest(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], str]:
    def mutate(v: Path) -> str:
        data = json.loads((v / "manifest.json").read_bytes())
        change(data)
        (v / "manifest.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return "manifest.json"
    return mutate


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(key, value)


def _rehash_row(d: dict[str, Any]) -> None:
    d["files"][0]["sha256"] = "0" * 64


def _drop_row(d: dict[str, Any]) -> None:
    d["files"].pop()


def _garble_manifest(v: Path) -> str:
    (v / "manifest.json").write_bytes(b'{"version": ')
    return "manifest.json"


def _delete_manifest(v: Path) -> str:
    (v / "manifest.json").unlink()
    return "manifest.json"


def _edit_bundle_manifest(v: Path) -> str:
    path = v / "bundle/manifest.json"
    path.write_bytes(path.read_bytes().replace(b'"modelkiln": "test"', b'"modelkiln": "evil"'))
    return "bundle/manifest.json"


MUTATIONS: dict[str, Callable[[Path], str]] = {
    "flip-first-byte": _flip("first"), "flip-middle-byte": _flip("middle"),
    "flip-last-byte": _flip("last"), "truncate": _truncate, "truncate-to-zero": _truncate_to_zero,
    "append": _append, "delete": _delete, "add": _add, "add-at-root": _add_at_root,
    "add-in-new-dir": _add_in_new_dir, "file-to-symlink": _symlink_to_identical_copy,
    "dir-to-symlink": _dir_to_symlink,
    "manifest-checksum": _edit_store_manifest(_set("checksum", "0" * 64)),
    "manifest-file-hash": _edit_store_manifest(_rehash_row),
    "manifest-drop-file": _edit_store_manifest(_drop_row),
    "manifest-metadata": _edit_store_manifest(_set("metadata", {"commit": "forged"})),
    "manifest-version": _edit_store_manifest(_set("version", "9.9.9")),
    "manifest-extra-key": _edit_store_manifest(_set("approved", True)),
    "manifest-garbled": _garble_manifest, "manifest-deleted": _delete_manifest,
    "bundle-manifest": _edit_bundle_manifest,
}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("drift")
    dist = make_dist(base, version=VERSION, seed=7)
    root = base / "store"
    publish_to_store(dist, root, AGENT, VERSION, {"commit": "abc"})
    return root


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_single_mutation_is_drift(template: Path, tmp_path: Path, mutation: str) -> None:
    root = copy_store(template, tmp_path / "store")
    ModelStore(root).verify(AGENT, VERSION)  # intact before
    touched = MUTATIONS[mutation](root / AGENT / "versions" / VERSION)
    with pytest.raises(DriftError) as err:
        ModelStore(root).verify(AGENT)
    assert err.value.exit_code == 2
    assert err.value.name == f"{AGENT}/{VERSION}"
    assert any(c.path == touched or c.path.startswith(touched + "/") for c in err.value.changes), \
        err.value.changes
    assert touched in str(err.value)


def test_every_mutation_is_caught_again_and_again(template: Path, tmp_path: Path) -> None:
    """The same verify call on the same tree keeps failing: nothing is cached or 'accepted'."""
    root = copy_store(template, tmp_path / "store")
    MUTATIONS["flip-middle-byte"](root / AGENT / "versions" / VERSION)
    store = ModelStore(root)
    for _ in range(3):
        with pytest.raises(DriftError):
            store.verify(AGENT, VERSION)


def test_mtime_only_change_is_not_drift(template: Path, tmp_path: Path) -> None:
    root = copy_store(template, tmp_path / "store")
    version = root / AGENT / "versions" / VERSION
    for path in version.rglob("*"):
        os.utime(path, ns=(1_000_000_000, 2_000_000_000_000_000_000))
    info = ModelStore(root).verify(AGENT, VERSION)
    assert info.checksum and info.files == 8


def test_drift_message_names_expected_and_actual(template: Path, tmp_path: Path) -> None:
    root = copy_store(template, tmp_path / "store")
    _append(root / AGENT / "versions" / VERSION)
    with pytest.raises(DriftError) as err:
        ModelStore(root).verify(AGENT, VERSION)
    (change,) = err.value.changes
    assert change.kind == "changed" and change.expected != change.actual
    assert err.value.expected != err.value.actual
