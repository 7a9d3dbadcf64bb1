"""Interoperability and offline verification.

The OpenSSF reference verifier (`model_signing`, pinned in the test extra) checks an unpacked
modelkiln bundle against the `bundle.sig` modelkiln wrote, with the network unreachable; and
modelkiln's own verification runs in a process that cannot open a connection.
"""
from __future__ import annotations

import subprocess
import tarfile
import textwrap
from pathlib import Path

import pytest

from modelkiln.artifacts import names
from signing.signkit import PYTHON, KeyPair, offline_cmd, offline_env, signed_dist

pytest.importorskip("model_signing", reason="the reference verifier is in the test extra")


def _unpack(dist: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    with tarfile.open(dist / names.ARCHIVE) as tar:
        tar.extractall(target, filter="data")
    return target


def _offline(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(offline_cmd(args), env=offline_env(tmp_path), capture_output=True,
                          text=True, timeout=120, check=False)


def _reference_verify(tmp_path: Path, model: Path, sig: Path, pub: Path
                      ) -> subprocess.CompletedProcess[str]:
    return _offline(tmp_path, [PYTHON, "-m", "model_signing", "verify", "key", "--signature",
                               str(sig), "--public_key", str(pub), str(model)])


def test_the_offline_harness_really_blocks_the_network(tmp_path: Path) -> None:
    """Without this, the offline tests below would pass on a machine with a network too."""
    probe = "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=2)\n"
    done = _offline(tmp_path, [PYTHON, "-c", probe])
    assert done.returncode != 0
    assert "network disabled" in done.stderr or "Network is unreachable" in done.stderr


def test_reference_verifier_accepts_what_modelkiln_signed_offline(tmp_path: Path,
                                                                  key: KeyPair) -> None:
    dist = signed_dist(tmp_path, key)
    model = _unpack(dist, tmp_path / "registry-v3")
    done = _reference_verify(tmp_path, model, dist / names.SIGNATURE, key.public)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Verification succeeded" in done.stdout + done.stderr


def test_reference_verifier_refuses_a_changed_byte_and_another_key(tmp_path: Path, key: KeyPair,
                                                                   other_key: KeyPair) -> None:
    dist = signed_dist(tmp_path, key)
    model = _unpack(dist, tmp_path / "registry-v3")
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[0] ^= 1
    weights.write_bytes(bytes(data))
    done = _reference_verify(tmp_path, model, dist / names.SIGNATURE, key.public)
    assert done.returncode != 0 and "model.safetensors" in done.stdout + done.stderr

    weights.write_bytes(_flip_back(data))  # intact again: only the key is wrong now
    done = _reference_verify(tmp_path, model, dist / names.SIGNATURE, other_key.public)
    assert done.returncode != 0 and "Key mismatch" in done.stdout + done.stderr


def test_modelkiln_verifies_offline(tmp_path: Path, key: KeyPair) -> None:
    """Signature, tarball and provenance checked in a process with no network at all."""
    dist = signed_dist(tmp_path, key)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from modelkiln import signing
        from modelkiln.artifacts.digest import sha256_file
        d = Path({str(dist)!r})
        trusted = signing.load_trusted_keys({str(key.public)!r})
        rec = signing.verify_bundle((d / "manifest.json").read_bytes(),
                                    (d / "bundle.sig").read_bytes(), trusted,
                                    "registry-v3", "3.0.0")
        a = d / "bundle.tar.gz"
        signing.check_archive(rec, a.stat().st_size, sha256_file(a), str(a))
        p = signing.verify_provenance((d / "provenance.sigstore.json").read_bytes(), trusted,
                                      rec, "provenance")
        print("verified", rec.label, p.builder_id)
    """)
    done = _offline(tmp_path, [PYTHON, "-c", script])
    assert done.returncode == 0, done.stderr
    assert "verified registry-v3 3.0.0 (pytorch) urn:modelkiln:builder:local" in done.stdout


def _flip_back(data: bytearray) -> bytes:
    data[0] ^= 1
    return bytes(data)
