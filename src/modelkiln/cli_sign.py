"""`kiln keygen`, `kiln sign` and `kiln verify-signature`: argv -> signing call -> exit code.

Kept beside cli.py (which adds these parsers) so the signing commands print for humans in one
place of their own; exit codes follow cli.py's table (7: a signature was refused).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from . import signing
from .artifacts import names
from .errors import KilnError, SignatureError
from .signing.files import read_regular
from .signing.keys import PASSWORD_ENV

MAX_MANIFEST = 64 << 20  # what the bootstrap reads a published manifest up to


def cmd_keygen(args: argparse.Namespace) -> int:
    private, public, kid = signing.generate(Path(args.dir), args.name)
    print(f"private key: {private} (mode 0600; keep it secret, e.g. a CI secret)")
    print(f"public key:  {public} (give it to every reader)")
    print(f"key id:      {kid}")
    print(f"sign with:   export {signing.KEY_FILE_ENV}={private}")
    print(f"verify with: export {signing.TRUSTED_ENV}={public}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    key = None
    if args.key:  # --key FILE wins over the environment; a password still comes from it
        key = signing.load_signing_key({signing.KEY_FILE_ENV: args.key, PASSWORD_ENV:
                                        os.environ.get(PASSWORD_ENV, "")})
    for dist in args.dist:
        result = signing.sign_dist(Path(dist), key, root=Path(args.root))
        what = ", ".join(result.written) + " written" if result.written else "unchanged"
        print(f"{result.record.label}: signed by key {result.key_id[:16]} ({what})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    directory = Path(args.path)
    trusted = signing.load_trusted_keys(args.trusted_keys, origin="--trusted-keys") \
        if args.trusted_keys is not None else signing.trusted_keys_from_env()
    if not trusted:
        raise KilnError(f"no trusted keys: pass --trusted-keys FILE or set {signing.TRUSTED_ENV}")
    manifest = _read(directory / names.MANIFEST, "manifest", MAX_MANIFEST, KilnError)
    sig_path = directory / names.SIGNATURE
    if not os.path.lexists(sig_path):
        raise SignatureError(f"{sig_path}: not found; this bundle is unsigned, sign it with "
                             f"`kiln sign {directory}`")
    record = signing.verify_bundle(manifest, _read(sig_path, "signature"), trusted,
                                   args.name, args.version, origin=str(sig_path),
                                   manifest_origin=str(directory / names.MANIFEST))
    archive = directory / names.ARCHIVE
    if archive.is_file():
        size, digest = _size_sha(archive)
        signing.check_archive(record, size, digest, str(archive))
    # `kiln sign` and publish always write the provenance beside the signature: "ok" vouches
    # for both, so a missing one is a refusal, never an ok that checked less than it says.
    prov_path = directory / names.PROVENANCE
    if not os.path.lexists(prov_path):
        raise SignatureError(f"{prov_path}: not found beside {names.SIGNATURE}; a signed bundle "
                             f"carries both, sign it again (`kiln sign {directory}`) or fetch "
                             "the file from where the bundle was published")
    prov = signing.verify_provenance(_read(prov_path, "provenance"), trusted, record,
                                     str(prov_path))
    commit = prov.source_commit[:12] if prov.source_commit else "no git revision"
    if getattr(args, "json", False):
        print(json.dumps({"ok": True, "bundle": record.label, "key_id": record.key_id,
                          "builder": prov.builder_id, "source_commit": prov.source_commit,
                          "inputs": len(prov.inputs)}, indent=2))
        return 0
    print(f"ok  {record.label}: signed by key {record.key_id[:16]}; provenance: builder "
          f"{prov.builder_id}, source {commit}, {len(prov.inputs)} inputs")
    return 0


def add_parsers(sub: Any) -> None:
    """Register the signing commands on cli.py's subparsers."""
    kg = sub.add_parser("keygen", help="write a P-256 signing key pair (private key mode 0600)",
                        description="Writes NAME.key (private, mode 0600) and NAME.pub in --dir "
                        "and prints the key id and the variables that use them.",
                        epilog="examples:\n  kiln keygen --dir keys --name publisher")
    kg.add_argument("--dir", default=".", help="where to write NAME.key and NAME.pub (default .)")
    kg.add_argument("--name", default="kiln-signing", help="file name stem (default kiln-signing)")
    kg.set_defaults(func=cmd_keygen)

    sg = sub.add_parser("sign", help="sign built bundles: bundle.sig + provenance.sigstore.json "
                        "beside dist/<name>/<version>/<backend>/manifest.json",
                        description="Signs each built bundle's manifest (OpenSSF model-signing "
                        "format, DSSE) and writes the signed SLSA provenance beside it; "
                        "`kiln publish` publishes both.",
                        epilog="examples:\n  KILN_SIGNING_KEY_FILE=keys/publisher.key kiln sign "
                        "dist/registry-v3/3.0.0/onnx\n  kiln sign dist/*/*/* --key keys/publisher.key")
    sg.add_argument("dist", nargs="+", help="dist/<name>/<version>/<backend>/ directories")
    sg.add_argument("--key", help=f"private key file (default: ${signing.KEY_FILE_ENV} or "
                    f"${signing.KEY_ENV})")
    sg.add_argument("--root", default=".", help="a directory in the git checkout whose HEAD the "
                    "provenance records (default: the current directory)")
    sg.set_defaults(func=cmd_sign)

    vs = sub.add_parser("verify-signature", help="verify a dist or published bundle directory's "
                        "signature, tarball and provenance, offline",
                        description="Checks, without any network, that the manifest is signed by "
                        "a trusted key, the tarball is the one signed and the provenance is "
                        "signed and names this bundle (exit 7 when anything is refused).",
                        epilog="examples:\n  kiln verify-signature dist/registry-v3/3.0.0/onnx "
                        "--trusted-keys keys/publisher.pub\n  kiln verify-signature "
                        "published/registry-v3/3.0.0/onnx --version 3.0.0 --json")
    vs.add_argument("path", help="directory holding manifest.json and bundle.sig")
    vs.add_argument("--trusted-keys", help=f"public key files or directories, '{os.pathsep}'-"
                    f"separated (default: ${signing.TRUSTED_ENV})")
    vs.add_argument("--name", help="refuse a signature for any other bundle name")
    vs.add_argument("--version", help="refuse a signature for any other version")
    vs.add_argument("--json", action="store_true", help="print the verified bundle, key and "
                    "provenance as JSON")
    vs.set_defaults(func=cmd_verify)


def _read(path: Path, what: str, limit: int = signing.MAX_SIGNATURE_BYTES,
          error: type[KilnError] = SignatureError) -> bytes:
    """A bundle directory's file, bounded and without blocking (a FIFO or device is refused)."""
    fix = "point at a dist or published bundle directory" if what == "manifest" else \
        f"not a modelkiln {what}: sign the bundle again (`kiln sign {path.parent}`)"
    return read_regular(path, what, limit, error=error, fix=fix)


def _size_sha(path: Path) -> tuple[int, str]:
    from .artifacts.digest import sha256_file

    return path.stat().st_size, sha256_file(path)
