"""publish_to_store: real dist directories (deterministic tarball + published manifest) into a store."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from distfactory import bundle_files, make_dist
from modelkiln.artifacts import manifest as mf
from modelkiln.artifacts.tarball import write_tarball
from modelkiln.errors import ConflictError, KilnError, PublishError
from modelkiln.publish.store import publish_to_store
from modelkiln.store import ModelStore
from store.store_helpers import AGENT, debris


def test_layout_store_manifest_and_unpacked_bundle(tmp_path: Path) -> None:
    dist = make_dist(tmp_path, version="3.0.0", backend="onnx", seed=1)
    r = publish_to_store(dist, tmp_path / "s", AGENT, "3.0.0", {"commit": "abc"})
    assert not r.noop and r.current
    assert r.path == tmp_path / "s" / AGENT / "versions" / "3.0.0"
    published = json.loads((dist / "manifest.json").read_bytes())
    inner = json.loads((r.bundle_path / "manifest.json").read_bytes())
    assert inner == {k: v for k, v in published.items() if k != "archive"}
    for rel, data in bundle_files("onnx", 1, 200_000).items():
        assert (r.bundle_path / rel).read_bytes() == data
    store_manifest = json.loads((r.path / "manifest.json").read_bytes())
    assert store_manifest["version"] == "3.0.0" and store_manifest["metadata"] == {"commit": "abc"}
    assert store_manifest["checksum"] == r.checksum
    assert store_manifest["bundle"]["archive_sha256"] == published["archive"]["sha256"]
    assert ModelStore(tmp_path / "s").get_current(AGENT) == r.path


def test_same_bytes_again_is_a_noop(tmp_path: Path) -> None:
    d1 = make_dist(tmp_path, version="1", seed=1)
    d2 = make_dist(tmp_path, version="2", seed=2)
    root = tmp_path / "s"
    publish_to_store(d1, root, AGENT, "1", {})
    publish_to_store(d2, root, AGENT, "2", {})
    before = (root / AGENT / "versions/1/manifest.json").read_bytes()
    again = publish_to_store(d1, root, AGENT, "1", {"other": "metadata"})
    assert again.noop and not again.current
    assert ModelStore(root).current_version(AGENT) == "2"
    assert (root / AGENT / "versions/1/manifest.json").read_bytes() == before


def test_different_bytes_under_a_published_version_conflict(tmp_path: Path) -> None:
    root = tmp_path / "s"
    first = publish_to_store(make_dist(tmp_path, version="1", seed=1), root, AGENT, "1", {})
    other = make_dist(tmp_path, version="1", seed=2)
    with pytest.raises(ConflictError) as err:
        publish_to_store(other, root, AGENT, "1", {})
    assert err.value.exit_code == 5 and err.value.existing == first.archive_sha256
    ModelStore(root).verify(AGENT, "1")
    assert debris(root / AGENT) == []


def test_damaged_tarball_is_refused_before_unpacking(tmp_path: Path) -> None:
    dist = make_dist(tmp_path, version="1", seed=1)
    data = bytearray((dist / "bundle.tar.gz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (dist / "bundle.tar.gz").write_bytes(bytes(data))
    with pytest.raises(PublishError, match="damaged"):
        publish_to_store(dist, tmp_path / "s", AGENT, "1", {})
    assert not (tmp_path / "s" / AGENT / "versions" / "1").exists()


def _repack(dist: Path, files: dict[str, bytes], manifest: mf.BundleManifest, src: Path) -> None:
    """Rewrite a dist dir whose tarball holds `files` + `manifest`, published as `manifest`."""
    src.mkdir()
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    (src / "inner.json").write_bytes(mf.dumps(manifest))
    size, sha = write_tarball(dist / "bundle.tar.gz",
                              [*((r, src / r) for r in files), ("manifest.json", src / "inner.json")])
    (dist / "manifest.json").write_bytes(mf.dumps(mf.with_archive(manifest, size, sha)))


def test_unpacked_bytes_must_match_the_bundle_manifest(tmp_path: Path) -> None:
    dist = make_dist(tmp_path, version="1", seed=1)
    manifest = mf.without_archive(mf.load_published(dist / "manifest.json"))
    files = bundle_files("pytorch", 1, 200_000)
    files["thresholds.json"] = b'{"a": 0.9, "b": 0.9}'.ljust(len(files["thresholds.json"]))
    _repack(dist, files, manifest, tmp_path / "src")  # sizes right, one sha256 wrong
    with pytest.raises(PublishError, match=r"thresholds\.json"):
        publish_to_store(dist, tmp_path / "s", AGENT, "1", {})
    assert ModelStore(tmp_path / "s").list_versions(AGENT) == []
    assert debris(tmp_path / "s" / AGENT) == []


def test_unlisted_member_is_refused(tmp_path: Path) -> None:
    dist = make_dist(tmp_path, version="1", seed=1)
    manifest = mf.without_archive(mf.load_published(dist / "manifest.json"))
    files = {**bundle_files("pytorch", 1, 200_000), "smuggled.sh": b"rm -rf /"}
    _repack(dist, files, manifest, tmp_path / "src")
    with pytest.raises(KilnError, match=r"smuggled\.sh"):
        publish_to_store(dist, tmp_path / "s", AGENT, "1", {})
    assert ModelStore(tmp_path / "s").list_versions(AGENT) == []


def test_publish_without_activating(tmp_path: Path) -> None:
    root = tmp_path / "s"
    publish_to_store(make_dist(tmp_path, version="1", seed=1), root, AGENT, "1", {})
    r = publish_to_store(make_dist(tmp_path, version="2", seed=2), root, AGENT, "2", {},
                         activate=False)
    assert not r.current and ModelStore(root).current_version(AGENT) == "1"
    assert ModelStore(root).rollback(AGENT, "2").current
