"""Key handling: generation (0600 private key, no overwrite), loading from a file or from an
environment variable, encrypted keys, and what may go in the trusted-keys list."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelkiln import signing
from modelkiln.errors import KilnError, SignatureError
from signing.signkit import KeyPair


def test_keygen_writes_a_0600_private_key_and_a_public_key(tmp_path: Path) -> None:
    private, public, kid = signing.generate(tmp_path / "k", "ci")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    loaded = signing.load_signing_key({signing.KEY_FILE_ENV: str(private)})
    assert loaded is not None and loaded.public.key_id == kid
    assert [k.key_id for k in signing.load_trusted_keys(str(public))] == [kid]


def test_keygen_never_overwrites_a_key(tmp_path: Path, key: KeyPair) -> None:
    before = key.private.read_bytes()
    with pytest.raises(KilnError, match="already exists"):
        signing.generate(key.private.parent, "publisher")
    assert key.private.read_bytes() == before


def test_key_from_environment_text_and_password(tmp_path: Path, key: KeyPair) -> None:
    pem = key.private.read_text()
    from_env = signing.load_signing_key({signing.KEY_ENV: pem})
    assert from_env is not None and from_env.public.key_id == key.key_id
    assert signing.load_signing_key({}) is None
    with pytest.raises(KilnError, match="unset one of them"):
        signing.load_signing_key({signing.KEY_ENV: pem, signing.KEY_FILE_ENV: str(key.private)})

    raw = serialization.load_pem_private_key(key.private.read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(raw.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"s3cret")))
    with pytest.raises(KilnError, match="set KILN_SIGNING_KEY_PASSWORD"):
        signing.load_signing_key({signing.KEY_FILE_ENV: str(locked)})
    opened = signing.load_signing_key({signing.KEY_FILE_ENV: str(locked),
                                       "KILN_SIGNING_KEY_PASSWORD": "s3cret"})
    assert opened is not None and opened.public.key_id == key.key_id


def test_only_p256_keys_are_accepted(tmp_path: Path) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    pem = p384.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    with pytest.raises(SignatureError, match="not an ECDSA P-256 public key"):
        signing.signing_key_from_pem(pem, "p384.key")
    pub = p384.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(SignatureError, match="P-256"):
        signing.parse_public_keys(pub, "p384.pub")


def test_trusted_keys_refuse_a_private_key_and_read_directories(tmp_path: Path, key: KeyPair,
                                                                other_key: KeyPair) -> None:
    with pytest.raises(SignatureError, match="holds a private key"):
        signing.load_trusted_keys(str(key.private))
    with pytest.raises(SignatureError, match="no PEM public key found"):
        (tmp_path / "empty.pub").write_text("nothing here\n")
        signing.load_trusted_keys(str(tmp_path / "empty.pub"))
    trust_dir = tmp_path / "trusted"
    trust_dir.mkdir()
    for pair in (key, other_key):
        (trust_dir / pair.public.name).write_bytes(pair.public.read_bytes())
    ids = {k.key_id for k in signing.trusted_keys_from_env({signing.TRUSTED_ENV: str(trust_dir)})}
    assert ids == {key.key_id, other_key.key_id}
    assert signing.trusted_keys_from_env({}) == ()


def test_a_missing_trusted_key_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(KilnError) as exc:
        signing.load_trusted_keys(str(tmp_path / "nope.pub"))
    assert "nope.pub: cannot read the trusted key" in str(exc.value)
