"""Signatures through publish and the bootstrap, on real files.

Publish writes bundle.sig and provenance.sigstore.json after the tarball and before the manifest
(the commit point); the bootstrap with REGISTRY_TRUSTED_KEYS refuses an unsigned, mis-signed or
replayed bundle before it downloads or extracts anything, and verifies with no network.
"""
from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from distfactory import make_dist
from modelkiln import signing
from modelkiln.artifacts import names
from modelkiln.errors import SignatureError
from modelkiln.publish import publish_bundle
from modelkiln.runtime import bootstrap
from signing.signkit import PYTHON, KeyPair, offline_cmd, offline_env, signed_dist


def _env(uri: str, runtime: Path, key: KeyPair | None, **extra: str) -> dict[str, str]:
    env = {"MODEL_BACKEND": "pytorch", "MODEL_BUNDLE_S3_URI_PYTORCH": uri,
           "REGISTRY_RUNTIME_DIR": str(runtime), **extra}
    if key is not None:
        env["REGISTRY_TRUSTED_KEYS"] = str(key.public)
    return env


def _nothing_unpacked(runtime: Path) -> bool:
    versions = runtime / "pytorch" / "versions"
    return not versions.exists() or not any(versions.iterdir())


def test_publish_sends_signatures_before_the_manifest(tmp_path: Path, key: KeyPair,
                                                      other_key: KeyPair) -> None:
    dist = signed_dist(tmp_path, key)
    dest = tmp_path / "bucket"
    first = publish_bundle(dist, str(dest))
    assert first.uploaded == (names.ARCHIVE, names.SIGNATURE, names.PROVENANCE, names.MANIFEST)
    for name in (names.SIGNATURE, names.PROVENANCE, names.MANIFEST):
        assert (dest / name).read_bytes() == (dist / name).read_bytes()
    again = publish_bundle(dist, str(dest))
    assert again.unchanged and again.bytes_uploaded == 0

    # Rotation: re-signing a published version with the new key sends only the signatures.
    signing.sign_dist(dist, other_key.signing_key())
    resigned = publish_bundle(dist, str(dest))
    assert resigned.uploaded == (names.SIGNATURE, names.PROVENANCE) and not resigned.unchanged
    record = signing.verify_bundle((dest / names.MANIFEST).read_bytes(),
                                   (dest / names.SIGNATURE).read_bytes(), other_key.trusted())
    assert record.key_id == other_key.key_id


def test_an_unsigned_bundle_publishes_as_before(tmp_path: Path) -> None:
    dist = make_dist(tmp_path)
    result = publish_bundle(dist, str(tmp_path / "bucket"))
    assert result.uploaded == (names.ARCHIVE, names.MANIFEST)
    assert not (tmp_path / "bucket" / names.SIGNATURE).exists()


def test_bootstrap_accepts_a_signed_bundle(tmp_path: Path, key: KeyPair) -> None:
    uri = publish_bundle(signed_dist(tmp_path, key), str(tmp_path / "bucket")).archive_uri
    rt = bootstrap(_env(uri, tmp_path / "rt", key, MODEL_BUNDLE_VERSION="3.0.0"))
    assert rt.version == "3.0.0" and (rt.directory / "config.json").is_file()
    again = bootstrap(_env(uri, tmp_path / "rt", key))
    assert not again.downloaded  # the signature is checked on a cached start too, cheaply


def test_bootstrap_refuses_unsigned_before_extracting(tmp_path: Path, key: KeyPair) -> None:
    uri = publish_bundle(make_dist(tmp_path), str(tmp_path / "bucket")).archive_uri
    with pytest.raises(SignatureError, match=r"bundle\.sig: not found, and REGISTRY_TRUSTED_KEYS"):
        bootstrap(_env(uri, tmp_path / "rt", key))
    assert _nothing_unpacked(tmp_path / "rt")
    assert bootstrap(_env(uri, tmp_path / "rt", None)).version == "3.0.0"  # no keys: as before


def test_bootstrap_refuses_another_key_and_a_replay(tmp_path: Path, key: KeyPair,
                                                    other_key: KeyPair) -> None:
    stranger = publish_bundle(signed_dist(tmp_path / "s", other_key),
                              str(tmp_path / "stranger")).archive_uri
    with pytest.raises(SignatureError, match="which is not trusted"):
        bootstrap(_env(stranger, tmp_path / "rt", key))

    old = signed_dist(tmp_path / "old", key, version="2.0.0", seed=1)
    new_uri = publish_bundle(signed_dist(tmp_path / "new", key, version="3.0.0", seed=2),
                             str(tmp_path / "bucket")).archive_uri
    (tmp_path / "bucket" / names.SIGNATURE).write_bytes((old / names.SIGNATURE).read_bytes())
    with pytest.raises(SignatureError, match="replayed"):
        bootstrap(_env(new_uri, tmp_path / "rt", key))
    # A whole old version served where 3.0.0 is pinned.
    old_uri = publish_bundle(old, str(tmp_path / "old-bucket")).archive_uri
    with pytest.raises(SignatureError, match=r"but version '3\.0\.0' was asked for"):
        bootstrap(_env(old_uri, tmp_path / "rt", key, MODEL_BUNDLE_VERSION="3.0.0"))
    assert _nothing_unpacked(tmp_path / "rt")


def test_bootstrap_refuses_a_swapped_tarball_with_a_rewritten_manifest(tmp_path: Path,
                                                                       key: KeyPair) -> None:
    """The attacker replaces bundle.tar.gz and rewrites manifest.json to match: refused."""
    uri = publish_bundle(signed_dist(tmp_path, key), str(tmp_path / "bucket")).archive_uri
    evil = make_dist(tmp_path / "evil", seed=9)
    for name in (names.ARCHIVE, names.MANIFEST):
        (tmp_path / "bucket" / name).write_bytes((evil / name).read_bytes())
    with pytest.raises(SignatureError, match="is not the signed one"):
        bootstrap(_env(uri, tmp_path / "rt", key))
    assert _nothing_unpacked(tmp_path / "rt")


def test_bootstrap_verifies_with_the_network_unreachable(tmp_path: Path, key: KeyPair) -> None:
    uri = publish_bundle(signed_dist(tmp_path, key), str(tmp_path / "bucket")).archive_uri
    env = {**offline_env(tmp_path), **_env(uri, tmp_path / "rt", key)}
    done = subprocess.run(offline_cmd([PYTHON, "-m", "modelkiln.cli", "bootstrap", "--json"]),
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert '"model_version": "3.0.0"' in done.stdout
    (tmp_path / "bucket" / names.SIGNATURE).unlink()
    done = subprocess.run(offline_cmd([PYTHON, "-m", "modelkiln.cli", "bootstrap"]),
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 7 and "not found, and REGISTRY_TRUSTED_KEYS" in done.stderr


def test_the_bundles_own_manifest_is_signed_too(tmp_path: Path, key: KeyPair) -> None:
    """For readers without the published manifest (an OCI artifact, an unpacked bundle)."""
    dist = signed_dist(tmp_path, key)
    sig = (dist / names.SIGNATURE).read_bytes()
    with tarfile.open(dist / names.ARCHIVE) as tar:
        member = tar.extractfile(names.MANIFEST)
        assert member is not None
        inner = member.read()
    record = signing.verify_bundle_manifest(inner, sig, key.trusted(), "registry-v3", "3.0.0")
    assert record.version == "3.0.0"
    with pytest.raises(SignatureError, match="is not the signed bundle manifest"):
        signing.verify_bundle_manifest(inner.replace(b'"tools"', b'"tools" '), sig,
                                       key.trusted())
    unpacked = tmp_path / "unpacked"
    with tarfile.open(dist / names.ARCHIVE) as tar:
        tar.extractall(unpacked, filter="data")
    assert signing.file_changes(record, unpacked) == []
    (unpacked / names.MANIFEST).write_bytes(inner + b" ")
    assert [c.path for c in signing.file_changes(record, unpacked)] == [names.MANIFEST]


def test_publish_signs_only_when_a_key_is_configured(tmp_path: Path, key: KeyPair) -> None:
    """What `kiln publish` calls first: no key, nothing written; a key, both files."""
    dist = make_dist(tmp_path)
    assert signing.sign_if_configured(dist, None, env={}) is None
    assert not (dist / names.SIGNATURE).exists() and not (dist / names.PROVENANCE).exists()
    done = signing.sign_if_configured(dist, None, env={"KILN_SIGNING_KEY": key.private.read_text()})
    assert done is not None and done.key_id == key.key_id
    assert done.written == (names.SIGNATURE, names.PROVENANCE)
