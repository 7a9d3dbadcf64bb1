"""verify_bundle and friends: a good signature is accepted; every way a bundle can be not what
its publisher signed is refused with one SignatureError line (exit 7) that says what is wrong."""
from __future__ import annotations

import base64
import json
import tarfile
from pathlib import Path

import pytest

from modelkiln import signing
from modelkiln.artifacts import names
from modelkiln.artifacts.digest import sha256_file
from modelkiln.errors import ExitCode, SignatureError
from signing.signkit import KeyPair, signed_dist


def _read(dist: Path) -> tuple[bytes, bytes]:
    return (dist / names.MANIFEST).read_bytes(), (dist / names.SIGNATURE).read_bytes()


def _refusal(exc: pytest.ExceptionInfo[SignatureError]) -> str:
    text = str(exc.value)
    assert "\n" not in text, "a refusal is one line"
    assert exc.value.exit_code == ExitCode.SIGNATURE and int(exc.value.exit_code) == 7
    return text


def test_good_signature_is_accepted(tmp_path: Path, key: KeyPair) -> None:
    dist = signed_dist(tmp_path, key)
    manifest, sig = _read(dist)
    record = signing.verify_bundle(manifest, sig, key.trusted(), "registry-v3", "3.0.0")
    assert (record.name, record.version, record.backend) == ("registry-v3", "3.0.0", "pytorch")
    assert record.key_id == key.key_id
    published = json.loads(manifest)
    assert record.archive_sha256 == published["archive"]["sha256"]
    assert dict(record.files) == {f["path"]: f["sha256"] for f in published["files"]}
    signing.check_archive(record, *_size_sha(dist / names.ARCHIVE), "bundle.tar.gz")
    unpacked = _unpack(dist, tmp_path / "unpacked")
    signing.check_files(record, unpacked, str(unpacked))


def test_signing_is_deterministic_so_a_resign_rewrites_nothing(tmp_path: Path,
                                                                key: KeyPair) -> None:
    dist = signed_dist(tmp_path, key)
    before = _read(dist)[1], (dist / names.PROVENANCE).read_bytes()
    result = signing.sign_dist(dist, key.signing_key())
    assert result.written == ()
    assert (_read(dist)[1], (dist / names.PROVENANCE).read_bytes()) == before


def test_a_changed_byte_in_the_tarball_is_refused(tmp_path: Path, key: KeyPair) -> None:
    dist = signed_dist(tmp_path, key)
    record = signing.verify_bundle(*_read(dist), key.trusted())
    archive = dist / names.ARCHIVE
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    with pytest.raises(SignatureError) as exc:
        signing.check_archive(record, *_size_sha(archive), str(archive))
    assert "differ from the signed" in _refusal(exc)


def test_a_changed_byte_in_an_unpacked_file_is_refused(tmp_path: Path, key: KeyPair) -> None:
    dist = signed_dist(tmp_path, key)
    record = signing.verify_bundle(*_read(dist), key.trusted())
    unpacked = _unpack(dist, tmp_path / "unpacked")
    weights = unpacked / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[7] ^= 0x80
    weights.write_bytes(bytes(data))
    with pytest.raises(SignatureError) as exc:
        signing.check_files(record, unpacked, str(unpacked))
    line = _refusal(exc)
    assert "changed model.safetensors" in line and "against the signature" in line


def test_a_changed_manifest_is_refused(tmp_path: Path, key: KeyPair) -> None:
    """An attacker who swaps the tarball must also rewrite the manifest's digests: refused."""
    dist = signed_dist(tmp_path, key)
    manifest, sig = _read(dist)
    doc = json.loads(manifest)
    doc["files"][0]["sha256"] = "0" * 64
    with pytest.raises(SignatureError) as exc:
        signing.verify_bundle(json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n", sig,
                              key.trusted())
    line = _refusal(exc)
    assert "is not the signed one" in line and f"{doc['files'][0]['path']} is listed" in line

    doc = json.loads(manifest)
    doc["archive"]["sha256"] = "f" * 64
    with pytest.raises(SignatureError) as exc:
        signing.verify_bundle(json.dumps(doc).encode(), sig, key.trusted())
    assert "its archive sha256 ffffffffffffffff is not the signed" in _refusal(exc)


def test_a_signature_by_another_key_is_refused(tmp_path: Path, key: KeyPair,
                                               other_key: KeyPair) -> None:
    dist = signed_dist(tmp_path, other_key)
    with pytest.raises(SignatureError) as exc:
        signing.verify_bundle(*_read(dist), key.trusted())
    line = _refusal(exc)
    assert f"signed by key {other_key.key_id[:16]}, which is not trusted" in line
    assert key.key_id[:16] in line  # names the keys that are trusted


def test_a_forged_signature_under_a_trusted_key_hint_is_refused(tmp_path: Path, key: KeyPair,
                                                                other_key: KeyPair) -> None:
    """A stranger's signature relabelled with the trusted key's id does not verify."""
    dist = signed_dist(tmp_path, other_key)
    manifest, sig = _read(dist)
    doc = json.loads(sig)
    doc["verificationMaterial"]["publicKey"]["hint"] = key.key_id
    with pytest.raises(SignatureError) as exc:
        signing.verify_bundle(manifest, json.dumps(doc).encode(), key.trusted())
    assert "does not verify with key" in _refusal(exc)


def test_an_edited_signed_statement_is_refused(tmp_path: Path, key: KeyPair) -> None:
    dist = signed_dist(tmp_path, key)
    manifest, sig = _read(dist)
    doc = json.loads(sig)
    payload = base64.b64decode(doc["dsseEnvelope"]["payload"]).replace(b"3.0.0", b"3.0.1")
    doc["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    with pytest.raises(SignatureError) as exc:
        signing.verify_bundle(manifest, json.dumps(doc).encode(), key.trusted())
    assert "the signed statement was altered" in _refusal(exc)


def test_a_missing_signature_is_refused_when_required(tmp_path: Path, key: KeyPair) -> None:
    dist = signed_dist(tmp_path, key)
    manifest = _read(dist)[0]
    required = signing.Policy(key.trusted())
    with pytest.raises(SignatureError) as exc:
        signing.check_published(manifest, None, required, origin="s3://b/p/bundle.sig")
    line = _refusal(exc)
    assert line.startswith("s3://b/p/bundle.sig: not found") and "REGISTRY_TRUSTED_KEYS" in line
    # With no trusted keys nothing is required: an unsigned bundle is served as before.
    assert signing.check_published(manifest, None, signing.Policy(), origin="x") is None


def test_a_replayed_signature_of_another_version_is_refused(tmp_path: Path,
                                                            key: KeyPair) -> None:
    old = signed_dist(tmp_path / "v1", key, version="2.0.0", seed=1)
    new = signed_dist(tmp_path / "v2", key, version="3.0.0", seed=2)
    # The old version's signature beside the new version's manifest.
    with pytest.raises(SignatureError) as exc:
        signing.verify_bundle(_read(new)[0], _read(old)[1], key.trusted())
    line = _refusal(exc)
    assert "the signature is for registry-v3 2.0.0 (pytorch)" in line and "replayed" in line
    # The old version served whole where the new one is expected (a rollback).
    with pytest.raises(SignatureError) as exc:
        signing.verify_bundle(*_read(old), key.trusted(), "registry-v3", "3.0.0")
    assert "but version '3.0.0' was asked for" in _refusal(exc)
    with pytest.raises(SignatureError) as exc:
        signing.verify_bundle(*_read(old), key.trusted(), expected_name="other-model")
    assert "but name 'other-model' was asked for" in _refusal(exc)


def test_rotation_old_and_new_keys_both_trusted(tmp_path: Path, key: KeyPair,
                                                other_key: KeyPair) -> None:
    """During a rotation the trusted list holds both keys; bundles by either verify, and once
    the old key is dropped its bundles are refused until re-signed."""
    old_bundle = signed_dist(tmp_path / "a", key, version="1.0.0")
    new_bundle = signed_dist(tmp_path / "b", other_key, version="1.1.0")
    both = tmp_path / "trusted.pem"
    both.write_bytes(key.public.read_bytes() + other_key.public.read_bytes())
    trusted = signing.load_trusted_keys(str(both))
    assert {k.key_id for k in trusted} == {key.key_id, other_key.key_id}
    assert signing.verify_bundle(*_read(old_bundle), trusted).key_id == key.key_id
    assert signing.verify_bundle(*_read(new_bundle), trusted).key_id == other_key.key_id
    with pytest.raises(SignatureError):
        signing.verify_bundle(*_read(old_bundle), other_key.trusted())
    signing.sign_dist(old_bundle, other_key.signing_key())  # re-sign with the new key
    assert signing.verify_bundle(*_read(old_bundle), other_key.trusted()).key_id \
        == other_key.key_id


@pytest.mark.parametrize("data, expected", [
    (b"x" * (17 << 20), "over the 16777216 byte limit"),
    (b"{not json", "is not valid JSON"),
    (b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", '
     b'"mediaType": "x"}', "duplicate key 'mediaType'"),
    (b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.1+json"}', "not a Sigstore bundle"),
    (b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "dsseEnvelope": '
     b'{"signatures": []}}', "exactly one signature"),
])
def test_malformed_or_oversized_signatures_are_refused(tmp_path: Path, key: KeyPair, data: bytes,
                                                       expected: str) -> None:
    dist = signed_dist(tmp_path, key)
    with pytest.raises(SignatureError) as exc:
        signing.verify_bundle(_read(dist)[0], data, key.trusted())
    assert expected in _refusal(exc)


def test_sidecars_refuse_a_signature_made_for_other_bytes(tmp_path: Path, key: KeyPair) -> None:
    dist = signed_dist(tmp_path, key)
    manifest = _read(dist)[0]
    assert [s.name for s in signing.sidecars(dist, manifest)] == [names.SIGNATURE,
                                                                   names.PROVENANCE]
    with pytest.raises(SignatureError) as exc:
        signing.sidecars(dist, manifest.replace(b"3.0.0", b"3.0.9"))
    assert "sign it again with `kiln sign" in _refusal(exc)
    blob, media_type = signing.oci_signature(dist) or (b"", "")
    assert blob == _read(dist)[1]
    assert media_type == "application/vnd.dev.sigstore.bundle.v0.3+json"


def _size_sha(path: Path) -> tuple[int, str]:
    return path.stat().st_size, sha256_file(path)


def _unpack(dist: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    with tarfile.open(dist / names.ARCHIVE) as tar:
        tar.extractall(target, filter="data")
    return target
