"""`kiln registry verify` with REGISTRY_TRUSTED_KEYS: the bytes and the signature are checked."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from distfactory import make_dist
from modelkiln import registry as R
from modelkiln.artifacts import names
from modelkiln.errors import SignatureError
from modelkiln.publish import publish_bundle
from modelkiln.publish.store import publish_to_store
from signing.signkit import KeyPair, signed_dist

NAME = "registry-v3-pytorch"


def _world(tmp_path: Path, dist: Path, *, local: bool = True) -> Path:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / R.CURATED).write_text(json.dumps({"schema_version": 1, "entries": [
        {"name": NAME, "backend": "pytorch", "roles": ["registry-predictor"]}]}))
    published = publish_bundle(dist, str(tmp_path / "bucket"))
    stored = publish_to_store(dist, tmp_path / "store", "registry", "3.0.0", {})
    R.record_discovered(R.RegistryEntry(
        NAME, backend="pytorch", version="3.0.0",
        artifacts=R.Artifacts(store=str(stored.path), s3=published.archive_uri,
                              local=str(dist) if local else None)), registry_dir=configs)
    return configs


def test_verify_checks_the_signature_from_the_dist_or_the_published_copy(
        tmp_path: Path, key: KeyPair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_TRUSTED_KEYS", str(key.public))
    for local in (True, False):
        where = tmp_path / str(local)
        configs = _world(where, signed_dist(where, key), local=local)
        result = R.verify(NAME, registry_dir=configs)
        assert result.signed_by == key.key_id


def test_verify_refuses_an_unsigned_or_foreign_entry(tmp_path: Path, key: KeyPair,
                                                    other_key: KeyPair,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    configs = _world(tmp_path / "u", make_dist(tmp_path / "u"))
    assert R.verify(NAME, registry_dir=configs).signed_by is None  # no keys: bytes only
    monkeypatch.setenv("REGISTRY_TRUSTED_KEYS", str(key.public))
    with pytest.raises(SignatureError, match=r"bundle\.sig: not found"):
        R.verify(NAME, registry_dir=configs)

    configs = _world(tmp_path / "f", signed_dist(tmp_path / "f", other_key), local=False)
    with pytest.raises(SignatureError, match="which is not trusted"):
        R.verify(NAME, registry_dir=configs)


def test_verify_refuses_a_published_manifest_that_is_not_the_signed_one(
        tmp_path: Path, key: KeyPair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_TRUSTED_KEYS", str(key.public))
    configs = _world(tmp_path, signed_dist(tmp_path, key), local=False)
    other = make_dist(tmp_path / "other", seed=5)
    for name in (names.ARCHIVE, names.MANIFEST):  # the published copy swapped, its sig kept
        (tmp_path / "bucket" / name).write_bytes((other / name).read_bytes())
    with pytest.raises(SignatureError, match="is not the signed one"):
        R.verify(NAME, registry_dir=configs)


def test_verify_refuses_store_files_that_differ_from_the_signed_ones(
        tmp_path: Path, key: KeyPair, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store version is consistent with its own records but holds other bytes than the
    signed bundle the entry names: the signature catches what the store's seal cannot."""
    monkeypatch.setenv("REGISTRY_TRUSTED_KEYS", str(key.public))
    dist = signed_dist(tmp_path, key)
    configs = _world(tmp_path, dist, local=False)
    entry = R.list_entries(registry_dir=configs)[0]
    impostor = make_dist(tmp_path / "impostor", seed=5)
    stored = publish_to_store(impostor, tmp_path / "store2", "registry", "3.0.0", {})
    R.record_discovered(R.RegistryEntry(
        NAME, backend="pytorch", version="3.0.0",
        artifacts=R.Artifacts(store=str(stored.path), s3=entry.artifacts.s3)),
        registry_dir=configs)
    with pytest.raises(SignatureError, match=r"against the signature of registry-v3 3\.0\.0"):
        R.verify(NAME, registry_dir=configs)
