"""`kiln keygen`, `kiln sign` and `kiln verify-signature` as a user types them (real subprocess)."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from distfactory import make_dist
from modelkiln.artifacts import names
from signing.signkit import PYTHON


def _kiln(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("KILN_SIGNING", "REGISTRY_TRUSTED"))}
    return subprocess.run([PYTHON, "-m", "modelkiln.cli", *args], cwd=cwd, env={**full, **env},
                          capture_output=True, text=True, timeout=120, check=False)


def test_keygen_sign_verify_and_a_refusal(tmp_path: Path) -> None:
    done = _kiln("keygen", "--dir", "keys", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    private, public = tmp_path / "keys/kiln-signing.key", tmp_path / "keys/kiln-signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and public.is_file()
    assert "export KILN_SIGNING_KEY_FILE=" in done.stdout
    again = _kiln("keygen", "--dir", "keys", cwd=tmp_path)
    assert again.returncode == 1 and "already exists" in again.stderr
    (tmp_path / "afile").write_text("")
    onfile = _kiln("keygen", "--dir", "afile/keys", cwd=tmp_path)  # cannot be a directory
    assert onfile.returncode == 1 and "Traceback" not in onfile.stderr
    assert onfile.stderr.startswith("kiln: ") and "--dir" in onfile.stderr

    dist = make_dist(tmp_path, weights=5_000)
    unsigned = _kiln("verify-signature", str(dist), "--trusted-keys", str(public), cwd=tmp_path)
    assert unsigned.returncode == 7 and "this bundle is unsigned" in unsigned.stderr
    nokey = _kiln("sign", str(dist), cwd=tmp_path)
    assert nokey.returncode == 1 and "no signing key" in nokey.stderr

    signed = _kiln("sign", str(dist), cwd=tmp_path, KILN_SIGNING_KEY_FILE=str(private))
    assert signed.returncode == 0, signed.stderr
    assert "bundle.sig, provenance.sigstore.json written" in signed.stdout
    resigned = _kiln("sign", str(dist), "--key", str(private), cwd=tmp_path)
    assert "(unchanged)" in resigned.stdout

    ok = _kiln("verify-signature", str(dist), "--version", "3.0.0", cwd=tmp_path,
               REGISTRY_TRUSTED_KEYS=str(public))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok  registry-v3 3.0.0 (pytorch): signed by key")
    assert "provenance: builder urn:modelkiln:builder:local" in ok.stdout

    replay = _kiln("verify-signature", str(dist), "--version", "3.0.1", cwd=tmp_path,
                   REGISTRY_TRUSTED_KEYS=str(public))
    assert replay.returncode == 7
    assert replay.stderr.count("\n") == 1 and "replayed" in replay.stderr

    archive = dist / names.ARCHIVE
    data = bytearray(archive.read_bytes())
    data[-100] ^= 0xFF
    archive.write_bytes(bytes(data))
    changed = _kiln("verify-signature", str(dist), cwd=tmp_path,
                    REGISTRY_TRUSTED_KEYS=str(public))
    assert changed.returncode == 7 and "a changed byte" in changed.stderr
    assert "Traceback" not in changed.stderr
