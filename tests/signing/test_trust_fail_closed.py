"""A set REGISTRY_TRUSTED_KEYS fails closed: the real `kiln` command, real files, FIFOs, devices.

A trust list that names no usable key (only separators, an empty directory, a directory without
`*.pub` / `*.pem` files, a key on a curve we do not verify with, a FIFO or a device) is exit 7
before anything is fetched, on the tarball and the OCI bootstrap and in `kiln verify-signature`;
never "signatures not required", never a traceback, never a hang (a 20 s subprocess timeout turns
a hang into a failure). Then the refusals after the signature: a tarball replaced under a signed
manifest (7), an oversized `bundle.sig` (says so), a missing provenance file (no "ok").
"""
from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from distfactory import make_dist
from modelkiln import signing
from modelkiln.artifacts import names
from modelkiln.errors import SignatureError
from modelkiln.publish import publish_bundle
from modelkiln.runtime import bootstrap
from ociregistry import DockerRegistry
from signing.signkit import PYTHON, KeyPair, signed_dist

# A real secp112r1 public key (made with `openssl ecparam -name secp112r1`): a curve OpenSSL
# knows and `cryptography` does not load.
SECP112R1_PUB = """\
-----BEGIN PUBLIC KEY-----
MDIwEAYHKoZIzj0CAQYFK4EEAAYDHgAEViDqLM9MHwgmgS2KzdghkMHOWG4WLlUD
V1+mFw==
-----END PUBLIC KEY-----
"""
TIMEOUT = 20  # seconds; a command that blocks on a FIFO fails the test instead of hanging it


def kiln(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("KILN_SIGNING", "REGISTRY_TRUSTED", "MODEL_BUNDLE"))}
    return subprocess.run([PYTHON, "-m", "modelkiln.cli", *args], cwd=cwd, env={**base, **env},
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)


def bootstrap_env(uri: str, runtime: Path, trusted: str | None) -> dict[str, str]:
    env = {"MODEL_BACKEND": "pytorch", "MODEL_BUNDLE_S3_URI_PYTORCH": uri,
           "REGISTRY_RUNTIME_DIR": str(runtime)}
    if trusted is not None:
        env["REGISTRY_TRUSTED_KEYS"] = trusted
    return env


def nothing_installed(runtime: Path) -> bool:
    versions = runtime / "pytorch" / "versions"
    return not (runtime / "pytorch" / "current").is_symlink() and \
        (not versions.exists() or not any(versions.iterdir()))


def refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 7 with one `kiln:` line that contains `words`, and no traceback."""
    assert done.returncode == 7, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and done.stderr.startswith("kiln: ")
    assert done.stderr.count("\n") == 1, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


def trust_list(tmp_path: Path, case: str, key: KeyPair) -> str:
    """The REGISTRY_TRUSTED_KEYS value of a named hostile case (files made under tmp_path)."""
    where = tmp_path / "trust"
    where.mkdir(exist_ok=True)
    if case in ("empty-dir", "no-key-files"):
        d = where / case
        d.mkdir()
        if case == "no-key-files":  # a real key, but not under a name the list reads
            (d / "README").write_text("keys live here\n")
            (d / "publisher.key.txt").write_bytes(key.public.read_bytes())
        return str(d)
    return {"colon": ":", "spaced-colon": " : ", "empty": "", "blank": "   "}[case]


NO_KEY_CASES = ["colon", "spaced-colon", "empty", "blank", "empty-dir", "no-key-files"]


# ------------------------------------------------------------------ a list that names no key
@pytest.mark.parametrize("case", NO_KEY_CASES)
def test_a_trust_list_naming_no_key_refuses_unsigned_and_foreign_bundles(
        tmp_path: Path, key: KeyPair, other_key: KeyPair, case: str) -> None:
    """Before: signatures were silently not required and both bundles installed (exit 0)."""
    unsigned = publish_bundle(make_dist(tmp_path / "u"), str(tmp_path / "unsigned")).archive_uri
    foreign = publish_bundle(signed_dist(tmp_path / "f", other_key),
                             str(tmp_path / "foreign")).archive_uri
    value = trust_list(tmp_path, case, key)
    for uri in (unsigned, foreign):
        runtime = tmp_path / "rt"
        done = kiln(["bootstrap"], tmp_path, bootstrap_env(uri, runtime, value))
        refused(done, "REGISTRY_TRUSTED_KEYS", "names no trusted key")
        assert nothing_installed(runtime)


def test_the_refusal_comes_before_anything_is_fetched(tmp_path: Path) -> None:
    """The published manifest does not exist: a refusal of the trust list, not 'not found'."""
    gone = (tmp_path / "nowhere" / names.ARCHIVE).as_uri()
    done = kiln(["bootstrap"], tmp_path, bootstrap_env(gone, tmp_path / "rt", ":"))
    refused(done, "names no trusted key")
    oci = {"MODEL_BACKEND": "pytorch", "MODEL_BUNDLE_OCI_REF": "127.0.0.1:9/models/x:1.0.0",
           "REGISTRY_RUNTIME_DIR": str(tmp_path / "rt"), "REGISTRY_TRUSTED_KEYS": ":"}
    refused(kiln(["bootstrap"], tmp_path, oci), "names no trusted key")


def test_verify_signature_refuses_a_list_naming_no_key_with_7(tmp_path: Path,
                                                               key: KeyPair) -> None:
    """Before: exit 1 (a generic 'no trusted keys'), not the signature refusal."""
    dist = signed_dist(tmp_path, key)
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(kiln(["verify-signature", str(dist)], tmp_path,
                 {"REGISTRY_TRUSTED_KEYS": str(empty)}), "names no trusted key")
    refused(kiln(["verify-signature", str(dist), "--trusted-keys", ":"], tmp_path, {}),
            "--trusted-keys", "names no trusted key")


def test_unset_still_means_signatures_not_required(tmp_path: Path) -> None:
    assert signing.trusted_keys_from_env({}) == ()
    assert not signing.policy_from_env({}).required
    with pytest.raises(SignatureError, match="names no trusted key"):
        signing.trusted_keys_from_env({signing.TRUSTED_ENV: ""})


# ------------------------------------------------------------------ unusable key files
def test_a_key_on_an_unsupported_curve_is_one_line_exit_7(tmp_path: Path, key: KeyPair) -> None:
    """Before: cryptography's UnsupportedAlgorithm escaped as a traceback (exit 1)."""
    dist = signed_dist(tmp_path, key)
    uri = publish_bundle(dist, str(tmp_path / "bucket")).archive_uri
    odd = tmp_path / "secp112r1.pub"
    odd.write_text(SECP112R1_PUB)
    for value in (str(odd), f"{key.public}{os.pathsep}{odd}"):
        runtime = tmp_path / "rt"
        refused(kiln(["bootstrap"], tmp_path, bootstrap_env(uri, runtime, value)),
                "secp112r1.pub", "P-256")
        assert nothing_installed(runtime)
    refused(kiln(["verify-signature", str(dist), "--trusted-keys", str(odd)], tmp_path, {}),
            "P-256")


@pytest.mark.parametrize("case", ["fifo", "fifo-beside-a-key", "fifo-in-dir", "dev-zero",
                                  "dev-null", "dev-link-in-dir"])
def test_a_fifo_or_device_in_the_trust_list_is_refused_without_blocking(
        tmp_path: Path, key: KeyPair, case: str) -> None:
    """Before: a FIFO hung the bootstrap (open() waits for a writer), /dev/zero was exit 1,
    a FIFO or device link in a trust directory was skipped (then nothing was required)."""
    uri = publish_bundle(make_dist(tmp_path / "u"), str(tmp_path / "unsigned")).archive_uri
    fifo = tmp_path / "trusted.pub"
    os.mkfifo(fifo)
    d = tmp_path / "keys.d"
    d.mkdir()
    if case == "fifo-in-dir":
        os.mkfifo(d / "pipe.pub")
    if case == "dev-link-in-dir":
        (d / "zero.pem").symlink_to("/dev/zero")
    value = {"fifo": str(fifo), "fifo-beside-a-key": f"{key.public}{os.pathsep}{fifo}",
             "fifo-in-dir": str(d), "dev-zero": "/dev/zero", "dev-null": "/dev/null",
             "dev-link-in-dir": str(d)}[case]
    runtime = tmp_path / "rt"
    done = kiln(["bootstrap"], tmp_path, bootstrap_env(uri, runtime, value))
    refused(done, "not a regular file")
    assert nothing_installed(runtime)


# ------------------------------------------------------------------ after the signature
def test_a_tarball_replaced_under_a_signed_manifest_is_exit_7(tmp_path: Path,
                                                                key: KeyPair) -> None:
    """Before: the download's digest check said so, as a transfer failure (exit 1)."""
    uri = publish_bundle(signed_dist(tmp_path, key), str(tmp_path / "bucket")).archive_uri
    evil = make_dist(tmp_path / "evil", seed=9)
    (tmp_path / "bucket" / names.ARCHIVE).write_bytes((evil / names.ARCHIVE).read_bytes())
    runtime = tmp_path / "rt"
    refused(kiln(["bootstrap"], tmp_path, bootstrap_env(uri, runtime, str(key.public))),
            "a changed byte", names.ARCHIVE)
    assert nothing_installed(runtime)


@pytest.mark.s3
def test_a_tarball_replaced_on_s3_under_a_signed_manifest_is_a_signature_refusal(
        tmp_path: Path, s3: Any, key: KeyPair) -> None:
    """Over S3 the ranged download refuses another size before reading (HEAD) and another
    sha256 after; both were PublishError (exit 1) under a signed manifest."""
    dist = signed_dist(tmp_path, key)
    result = publish_bundle(dist, s3.uri("b/"))
    signed = (dist / names.ARCHIVE).read_bytes()
    flipped = bytearray(signed)
    flipped[-100] ^= 0xFF
    other_size = (make_dist(tmp_path / "evil", seed=9) / names.ARCHIVE).read_bytes()
    assert len(other_size) != len(signed)
    env = bootstrap_env(result.archive_uri, tmp_path / "rt", str(key.public))
    for data in (other_size, bytes(flipped)):
        s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}b/{names.ARCHIVE}", Body=data)
        with pytest.raises(SignatureError, match="a changed byte") as exc:
            bootstrap(env)
        assert exc.value.exit_code == 7
        assert nothing_installed(tmp_path / "rt")


def test_an_oversized_signature_says_so(tmp_path: Path, key: KeyPair) -> None:
    """Before: "larger than 16777216 bytes; not a manifest" (exit 1)."""
    dist = signed_dist(tmp_path, key)
    uri = publish_bundle(dist, str(tmp_path / "bucket")).archive_uri
    for sig in (tmp_path / "bucket" / names.SIGNATURE, dist / names.SIGNATURE):
        os.truncate(sig, signing.MAX_SIGNATURE_BYTES + 1)  # sparse: no disk spent
    runtime = tmp_path / "rt"
    done = kiln(["bootstrap"], tmp_path, bootstrap_env(uri, runtime, str(key.public)))
    refused(done, names.SIGNATURE, "limit for a signature")
    assert "manifest" not in done.stderr and nothing_installed(runtime)
    refused(kiln(["verify-signature", str(dist), "--trusted-keys", str(key.public)], tmp_path,
                 {}), names.SIGNATURE, "limit for a signature")


def test_verify_signature_does_not_say_ok_without_the_provenance(tmp_path: Path,
                                                                 key: KeyPair) -> None:
    """Before: exit 0 and "ok" with the provenance file gone (it was only checked if present)."""
    dist = signed_dist(tmp_path, key)
    ok = kiln(["verify-signature", str(dist), "--trusted-keys", str(key.public)], tmp_path, {})
    assert ok.returncode == 0 and ok.stdout.startswith("ok ") and "provenance:" in ok.stdout
    (dist / names.PROVENANCE).unlink()
    done = kiln(["verify-signature", str(dist), "--trusted-keys", str(key.public)], tmp_path, {})
    refused(done, names.PROVENANCE)
    assert "ok" not in done.stdout
    os.mkfifo(dist / names.PROVENANCE)  # not a file either; and not read (no hang)
    refused(kiln(["verify-signature", str(dist), "--trusted-keys", str(key.public)], tmp_path,
                 {}), names.PROVENANCE)


# ------------------------------------------------------------------ the OCI bootstrap
def push_artifact(root: Path, host: str, version: str, key: KeyPair | None) -> str:
    """Push a bundle as a model artifact (the image stage's own builder), signed when `key`."""
    from modelkiln.artifacts.oci import media
    from modelkiln.artifacts.oci.build import model_artifact
    from modelkiln.artifacts.oci.layout import OciLayout
    from modelkiln.publish.oci import attach_signature, push
    from modelkiln.stages.image import bundle_files

    dist = make_dist(root, version=version, weights=20_000)
    if key is not None:
        signing.sign_dist(dist, key.signing_key())
    files, inner = bundle_files(dist)
    lay = OciLayout(root / f"oci-{version}")
    lay.init()
    lay.put_bytes(inner, media.MODEL_WEIGHT_CONFIG_RAW)
    with tarfile.open(dist / names.ARCHIVE) as tar:
        for m in tar.getmembers():
            src = tar.extractfile(m) if m.isfile() and m.name != names.MANIFEST else None
            if src is not None:
                lay.put_bytes(src.read(), media.MODEL_WEIGHT_RAW)
    notes = {media.TITLE: "registry-v3", media.VERSION: version,
             media.BUNDLE_NAME: "registry-v3", media.BUNDLE_BACKEND: "pytorch",
             media.BUNDLE_MANIFEST: next(f.digest for f in files if f.path == names.MANIFEST),
             media.KIND: "model"}
    art = model_artifact(lay, files, name="registry-v3", version=version, backend="pytorch",
                         description="", annotations=notes)
    lay.write_index([media.Descriptor(art.media_type, art.digest, art.size,
                                      ((media.REF_NAME, "model"),), art.artifact_type)])
    if key is not None:
        assert attach_signature(lay.root, ["model"], dist)
    target = f"{host}/models/trust:{version}"
    push(lay.root, "model", target)
    return target


@pytest.mark.oci
def test_the_oci_bootstrap_refuses_with_a_list_naming_no_key(
        tmp_path: Path, oci_registry: DockerRegistry, key: KeyPair, other_key: KeyPair) -> None:
    """Before: the OCI bootstrap installed an unsigned and a stranger-signed artifact (exit 0)."""
    refs = [push_artifact(tmp_path / "u", oci_registry.host, "1.0.0", None),
            push_artifact(tmp_path / "s", oci_registry.host, "1.0.1", other_key)]
    empty = tmp_path / "empty"
    empty.mkdir()
    for ref in refs:
        runtime = tmp_path / "rt"
        env = {"MODEL_BACKEND": "pytorch", "MODEL_BUNDLE_OCI_REF": ref,
               "REGISTRY_RUNTIME_DIR": str(runtime), "REGISTRY_TRUSTED_KEYS": str(empty)}
        refused(kiln(["bootstrap"], tmp_path, env), "names no trusted key")
        assert nothing_installed(runtime)
    # The same artifacts with a real trust list: unsigned and foreign refused, as before.
    env["REGISTRY_TRUSTED_KEYS"] = str(key.public)
    refused(kiln(["bootstrap"], tmp_path, env), "not trusted")
