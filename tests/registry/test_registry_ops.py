"""Registry verbs on real published bundles: list, select, verify (drift, exit 2), lock/unlock with
store pins, record_discovered from concurrent publishers."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from distfactory import make_dist
from modelkiln import registry as R
from modelkiln.errors import CapabilityError, DriftError, KilnError, PublishError
from modelkiln.publish.store import publish_to_store
from modelkiln.store import ModelStore

NAME = "registry-v3-onnx"


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """A store with 3.0.0 published, curated entries, and the publish recorded as discovered."""
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / R.CURATED).write_text(json.dumps({"schema_version": 1, "entries": [
        {"name": NAME, "backend": "onnx", "roles": ["registry-predictor"],
         "capabilities": ["multi-label", "int8"], "served_model_id": "registry-v3"},
        {"name": "vision-x", "backend": "vllm", "roles": ["vision"], "capabilities": ["vision"]},
    ]}, indent=2))
    dist = make_dist(tmp_path, version="3.0.0", backend="onnx", seed=3)
    r = publish_to_store(dist, tmp_path / "store", "registry", "3.0.0", {})
    R.record_discovered(R.RegistryEntry(
        NAME, backend="onnx", version="3.0.0",
        artifacts=R.Artifacts(store=str(r.path), s3="s3://models/registry/3.0.0/onnx/",
                              local=str(dist))), registry_dir=configs)
    return {"configs": configs, "version": r.path, "dist": dist, "store": tmp_path / "store"}


def test_record_uses_the_store_checksum(world: dict[str, Path]) -> None:
    (entry,) = R.list_entries(registry_dir=world["configs"])
    info = ModelStore(world["store"]).verify("registry", "3.0.0")
    assert entry.aggregate_sha256 == info.checksum and len(entry.files) == info.files
    assert entry.served_model_id == "registry-v3"  # static field from the curated layer


def test_list_filters(world: dict[str, Path]) -> None:
    configs = world["configs"]
    assert [e.name for e in R.list_entries(registry_dir=configs)] == [NAME]
    assert [e.name for e in R.list_entries(include_non_installed=True, registry_dir=configs)] \
        == [NAME, "vision-x"]
    assert [e.name for e in R.list_entries(role="vision", include_non_installed=True,
                                           registry_dir=configs)] == ["vision-x"]
    assert R.list_entries(role="vision", registry_dir=configs) == []


def test_select_resolves_paths_or_raises_capability_error(world: dict[str, Path]) -> None:
    sel = R.select(NAME, ["int8", "multi-label"], registry_dir=world["configs"])
    assert sel.store == world["version"] and sel.bundle == world["version"] / "bundle"
    assert sel.served_model_id == "registry-v3" and sel.s3 is not None
    assert sel.s3.startswith("s3://")
    with pytest.raises(CapabilityError) as err:
        R.select(NAME, ["int8", "vision", "gpu"], registry_dir=world["configs"])
    assert err.value.exit_code == 4 and err.value.missing == ["vision", "gpu"]
    with pytest.raises(KilnError, match="did you mean"):
        R.select("registry-v3-onnxx", registry_dir=world["configs"])


def test_verify_updates_last_verified(world: dict[str, Path]) -> None:
    result = R.verify(NAME, registry_dir=world["configs"])
    assert not result.recorded
    assert result.files == ModelStore(world["store"]).verify("registry", "3.0.0").files == 9
    (entry,) = R.list_entries(registry_dir=world["configs"])
    assert entry.version_lock.last_verified == result.last_verified
    snapshot = json.loads((world["configs"] / R.SNAPSHOT).read_bytes())
    assert snapshot["entries"][0]["version_lock"]["last_verified"] == result.last_verified
    assert "last_verified" not in (world["configs"] / R.CURATED).read_text()


def _flip(v: Path) -> str:
    p = v / "bundle/model.safetensors"
    st = p.stat()
    data = bytearray(p.read_bytes())
    data[100] ^= 1
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    return "bundle/model.safetensors"


def _to_symlink(v: Path) -> str:
    shutil.copyfile(v / "bundle/config.json", v.parent / "elsewhere.json")
    (v / "bundle/config.json").unlink()
    os.symlink(v.parent / "elsewhere.json", v / "bundle/config.json")
    return "bundle/config.json"


def _edit_store_manifest(v: Path) -> str:
    data = json.loads((v / "manifest.json").read_bytes())
    data["metadata"] = {"approved_by": "nobody"}
    (v / "manifest.json").write_text(json.dumps(data))
    return "manifest.json"


def _truncate(v: Path) -> str:
    os.truncate(v / "bundle/config.json", 3)
    return "bundle/config.json"


def _append(v: Path) -> str:
    with open(v / "bundle/thresholds.json", "ab") as f:
        f.write(b"\n")
    return "bundle/thresholds.json"


def _delete(v: Path) -> str:
    (v / "bundle/label_order.json").unlink()
    return "bundle/label_order.json"


MUTATIONS: dict[str, Callable[[Path], str]] = {
    "flip": _flip,
    "truncate": _truncate,
    "append": _append,
    "delete": _delete,
    "add": lambda v: ((v / "bundle/new.txt").write_bytes(b""), "bundle/new.txt")[1],
    "symlink": _to_symlink,
    "store-manifest": _edit_store_manifest,
    "bundle-manifest": lambda v: ((v / "bundle/manifest.json").write_text("{}"),
                                  "bundle/manifest.json")[1],
}


@pytest.mark.parametrize("locked", [False, True])
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_verify_names_every_drift(world: dict[str, Path], mutation: str, locked: bool) -> None:
    configs = world["configs"]
    if locked:
        R.lock(NAME, registry_dir=configs)
    touched = MUTATIONS[mutation](world["version"])
    before = (configs / R.DISCOVERED).read_bytes()
    with pytest.raises(DriftError) as err:
        R.verify(NAME, registry_dir=configs)
    assert err.value.exit_code == 2 and err.value.name == NAME
    assert touched in [c.path for c in err.value.changes]
    assert (configs / R.DISCOVERED).read_bytes() == before  # a failed verify records nothing


def test_mtime_only_is_not_drift(world: dict[str, Path]) -> None:
    for path in world["version"].rglob("*"):
        os.utime(path, ns=(0, 4_000_000_000_000_000_000))
    assert R.verify(NAME, registry_dir=world["configs"]).aggregate_sha256


def test_missing_artifact_directory_is_drift(world: dict[str, Path]) -> None:
    shutil.rmtree(world["version"])
    with pytest.raises(DriftError) as err:
        R.verify(NAME, registry_dir=world["configs"])
    assert err.value.changes[0].kind == "missing"


def test_dist_only_entry_verifies_the_dist_directory(world: dict[str, Path]) -> None:
    configs = world["configs"]
    R.record_discovered(R.RegistryEntry("dist-only", artifacts=R.Artifacts(local=str(world["dist"]))),
                        registry_dir=configs)
    assert R.verify("dist-only", registry_dir=configs).files == 2
    with open(world["dist"] / "bundle.tar.gz", "ab") as f:
        f.write(b"\0")
    with pytest.raises(DriftError) as err:
        R.verify("dist-only", registry_dir=configs)
    assert [c.path for c in err.value.changes] == ["bundle.tar.gz"]


def test_lock_pins_the_store_version_and_unlock_unpins(world: dict[str, Path]) -> None:
    configs, root = world["configs"], world["store"]
    entry = R.lock(NAME, registry_dir=configs)
    assert entry.version_lock.locked and entry.version_lock.expected_hash == entry.aggregate_sha256
    store = ModelStore(root)
    publish_to_store(make_dist(root.parent, version="4", seed=4), root, "registry", "4", {})
    assert store.prune("registry", keep=0) == []  # 4 is current, 3.0.0 pinned by the lock
    entry = R.unlock(NAME, registry_dir=configs)
    assert not entry.version_lock.locked
    assert store.prune("registry", keep=0) == ["3.0.0"]


def test_lock_set_expected_accepts_a_reviewed_change(world: dict[str, Path]) -> None:
    configs = world["configs"]
    R.lock(NAME, registry_dir=configs)
    (world["version"] / "bundle/thresholds.json").write_text('{"a": 0.7, "b": 0.2}')
    with pytest.raises(DriftError):
        R.verify(NAME, registry_dir=configs)
    entry = R.lock(NAME, set_expected=True, registry_dir=configs)
    assert R.verify(NAME, registry_dir=configs).aggregate_sha256 == entry.version_lock.expected_hash


def test_lock_needs_a_hash_or_set_expected(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    dist = make_dist(tmp_path, seed=1)
    (configs / R.CURATED).parent.mkdir()
    (configs / R.CURATED).write_text('{"schema_version": 1, "entries": [{"name": "c"}]}')
    with pytest.raises(KilnError, match="--set-expected"):
        R.lock("c", registry_dir=configs)
    with pytest.raises(KilnError, match="no local artifact"):
        R.lock("c", set_expected=True, registry_dir=configs)
    R.record_discovered(R.RegistryEntry("d", artifacts=R.Artifacts(local=str(dist)),
                                        files=(R.FileRecord("x", 1, "0" * 64),),
                                        aggregate_sha256="1" * 64), registry_dir=configs)
    assert R.lock("d", registry_dir=configs).version_lock.expected_hash == "1" * 64


def test_a_locked_entry_is_not_replaced_by_other_bytes(world: dict[str, Path]) -> None:
    configs, root = world["configs"], world["store"]
    (old,) = R.list_entries(registry_dir=configs)
    R.lock(NAME, registry_dir=configs)
    r = publish_to_store(make_dist(root.parent, version="3.1.0", backend="onnx", seed=31), root,
                         "registry", "3.1.0", {})
    new = R.RegistryEntry(NAME, version="3.1.0", artifacts=R.Artifacts(store=str(r.path)))
    with pytest.raises(PublishError, match="unlock"):
        R.record_discovered(new, registry_dir=configs)
    R.unlock(NAME, registry_dir=configs)
    recorded = R.record_discovered(new, registry_dir=configs)
    assert recorded.version == "3.1.0" and recorded.aggregate_sha256 != old.aggregate_sha256
    assert recorded.version_lock.last_verified is None


def _record(barrier: Barrier, configs: Path, i: int, dist: Path) -> None:
    barrier.wait()
    R.record_discovered(R.RegistryEntry(f"m{i}", backend="onnx",
                                        artifacts=R.Artifacts(local=str(dist))),
                        registry_dir=configs)


def test_concurrent_records_lose_nothing(world: dict[str, Path]) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_record, args=(barrier, world["configs"], i, world["dist"]))
             for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    names = {e.name for e in R.list_entries(registry_dir=world["configs"])}
    assert names == {NAME, *(f"m{i}" for i in range(6))}


def test_record_replaces_static_fields_only_where_curated_is_silent(world: dict[str, Path]) -> None:
    configs = world["configs"]
    (entry,) = R.list_entries(registry_dir=configs)
    R.record_discovered(replace(entry, served_model_id="from-build", description="built"),
                        registry_dir=configs)
    (merged,) = R.list_entries(registry_dir=configs)
    assert merged.served_model_id == "registry-v3" and merged.description == "built"
