"""Signing keys: a local ECDSA P-256 private key for publishers, trusted public keys for readers.

- The signing key comes from `KILN_SIGNING_KEY` (the PEM text itself, for CI secrets) or
  `KILN_SIGNING_KEY_FILE` (a path), optionally encrypted with `KILN_SIGNING_KEY_PASSWORD`.
- Trusted keys come from a list of paths (`REGISTRY_TRUSTED_KEYS`, `os.pathsep`-separated): each a
  PEM file (which may hold several public keys) or a directory whose `*.pub` / `*.pem` files are
  read. During a rotation the list holds the old and the new key. The list fails closed: one that
  yields no key, or names a file that is not a regular file of P-256 public keys, is refused
  (exit 7), never read as "signatures not required". Only an unset variable means that.
- A key is named by its id: the sha256 of its PEM SubjectPublicKeyInfo, the `hint` the OpenSSF
  model-signing tools write, so both sides agree on which key signed.

Signatures are deterministic ECDSA (RFC 6979): the same key over the same manifest gives the same
bytes, so publishing the same bundle again writes nothing new.
`cryptography` is imported inside the functions that need it, so importing modelkiln stays fast.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..artifacts.atomic import fsync_dir
from ..artifacts.digest import sha256_bytes
from ..errors import KilnError, SignatureError
from .files import read_regular

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

KEY_ENV = "KILN_SIGNING_KEY"
KEY_FILE_ENV = "KILN_SIGNING_KEY_FILE"
PASSWORD_ENV = "KILN_SIGNING_KEY_PASSWORD"
TRUSTED_ENV = "REGISTRY_TRUSTED_KEYS"
MAX_KEY_FILE = 1 << 20
MAX_TRUSTED = 256
_PEM_BEGIN = b"-----BEGIN "


@dataclass(frozen=True)
class PublicKey:
    """A trusted P-256 public key and where it came from (named in refusals)."""

    key_id: str
    pem: bytes
    origin: str

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True when `signature` (DER ECDSA over SHA-256) is this key's signature of `message`."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        key = load_pem_public_key(self.pem)
        assert isinstance(key, ec.EllipticCurvePublicKey)  # checked when the key was loaded
        try:
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    """A loaded P-256 private key, its public half's id, and where it came from."""

    private: ec.EllipticCurvePrivateKey
    public: PublicKey

    def sign(self, message: bytes) -> bytes:
        """Deterministic (RFC 6979) ECDSA P-256 / SHA-256 signature of `message`, DER-encoded."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return self.private.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    """The canonical PEM SubjectPublicKeyInfo bytes of a public key (what key ids hash)."""
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(pem: bytes) -> str:
    """A key's id: sha256 of its canonical PEM (the model-signing `publicKey.hint`)."""
    return sha256_bytes(pem)


def _public(key: object, origin: str) -> PublicKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise SignatureError(f"{origin}: not an ECDSA P-256 public key; modelkiln signs and "
                             "verifies with P-256 only (make one with `kiln keygen`)")
    pem = public_pem(key)
    return PublicKey(key_id(pem), pem, origin)


def load_signing_key(env: Mapping[str, str] | None = None) -> SigningKey | None:
    """The publisher's key from KILN_SIGNING_KEY or KILN_SIGNING_KEY_FILE; None when neither is set.

    A set but unusable key is an error, never a silent unsigned publish.
    """
    env = os.environ if env is None else env
    text, path = env.get(KEY_ENV, "").strip(), env.get(KEY_FILE_ENV, "").strip()
    if text and path:
        raise KilnError(f"both {KEY_ENV} and {KEY_FILE_ENV} are set; unset one of them")
    if not text and not path:
        return None
    origin = path or KEY_ENV
    data = read_regular(Path(path), "signing key", MAX_KEY_FILE, error=KilnError) if path \
        else text.encode()
    password = env.get(PASSWORD_ENV) or None
    return signing_key_from_pem(data, origin, password.encode() if password else None)


def signing_key_from_pem(data: bytes, origin: str, password: bytes | None = None) -> SigningKey:
    """Load a PEM private key; one clear line for a wrong password, curve or format."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(data, password)
    except UnsupportedAlgorithm as exc:  # a curve or key type OpenSSL here cannot load
        raise KilnError(f"{origin}: not an ECDSA P-256 key ({exc}); make a P-256 key with "
                        "`kiln keygen`") from None
    except TypeError:
        raise KilnError(f"{origin}: the key is encrypted; set {PASSWORD_ENV}" if password is None
                        else f"{origin}: the key is not encrypted; unset {PASSWORD_ENV}") from None
    except ValueError:
        raise KilnError(f"{origin}: not a PEM private key (or a wrong {PASSWORD_ENV}); make one "
                        "with `kiln keygen`") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KilnError(f"{origin}: not an ECDSA key; make a P-256 key with `kiln keygen`")
    return SigningKey(key, _public(key.public_key(), origin))


def parse_public_keys(data: bytes, origin: str) -> list[PublicKey]:
    """Every PEM public key in `data` (several may be concatenated); a private key is refused."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    keys = []
    for block in _pem_blocks(data):
        if b"PRIVATE KEY" in block.split(b"\n", 1)[0]:
            raise SignatureError(f"{origin}: holds a private key; trust the public key instead "
                                 "(the .pub file `kiln keygen` wrote)")
        try:
            keys.append(_public(load_pem_public_key(block), origin))
        except ValueError:
            raise SignatureError(f"{origin}: a PEM block that is not a public key; give "
                                 "P-256 public keys (`kiln keygen` writes them)") from None
        except UnsupportedAlgorithm as exc:  # a curve or key type OpenSSL here cannot load
            raise SignatureError(f"{origin}: not an ECDSA P-256 public key ({exc}); modelkiln "
                                 "signs and verifies with P-256 only (make one with `kiln "
                                 "keygen`)") from None
    if not keys:
        raise SignatureError(f"{origin}: no PEM public key found; give the .pub file `kiln "
                             "keygen` wrote")
    return keys


def load_trusted_keys(spec: str | Iterable[str | Path], origin: str = TRUSTED_ENV
                      ) -> tuple[PublicKey, ...]:
    """Trusted keys from paths (files or directories), e.g. the REGISTRY_TRUSTED_KEYS value.

    The one reader of a trust list, for every caller. It fails closed: a list that yields no key
    (only separators, an empty directory, one without `*.pub` / `*.pem` files) is refused, as is
    any file it names that is not a regular file of P-256 public keys; a FIFO or a device is
    refused without being read (see `_read_trusted`). `origin` names the list in refusals.
    """
    items = spec.split(os.pathsep) if isinstance(spec, str) else [str(p) for p in spec]
    keys: dict[str, PublicKey] = {}
    for item in (str(p).strip() for p in items):
        if not item:
            continue
        for file in _trusted_files(Path(item).expanduser()):
            for key in parse_public_keys(_read_trusted(file), str(file)):
                keys.setdefault(key.key_id, key)
    if not keys:
        shown = os.pathsep.join(str(p) for p in items)
        shown = repr(shown if len(shown) <= 120 else shown[:120] + "...")
        unset = f", or unset {TRUSTED_ENV} to accept unsigned bundles" \
            if origin == TRUSTED_ENV else ""
        raise SignatureError(f"{origin}={shown} names no trusted key, so no signature could "
                             "be accepted; point it at the signer's public key file(s) or a "
                             f"directory of *.pub / *.pem files (`kiln keygen` writes them){unset}")
    if len(keys) > MAX_TRUSTED:
        raise SignatureError(f"{origin}: {len(keys)} keys, more than {MAX_TRUSTED}; trust "
                             "the keys you sign with, not a directory of everything")
    return tuple(keys.values())


def _trusted_files(path: Path) -> list[Path]:
    """The key files one trust-list entry names: itself, or a directory's `*.pub` / `*.pem`
    entries (each then read like a listed file, so a FIFO there is refused, not skipped)."""
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        if not is_dir:
            return [path]
        files = sorted(f for f in path.iterdir() if f.suffix in (".pub", ".pem"))
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read the trusted key ({exc.strerror or exc}); "
                             "check the path") from None
    if len(files) > MAX_TRUSTED:
        raise SignatureError(f"{path}: {len(files)} key files, more than {MAX_TRUSTED}; trust "
                             "the keys you sign with, not a directory of everything")
    return files


def _read_trusted(path: Path) -> bytes:
    return read_regular(path, "trusted key", MAX_KEY_FILE,
                        fix="check the path (a trusted key is a PEM file such as the .pub file "
                            "`kiln keygen` wrote)")


def generate(directory: Path, name: str = "kiln-signing") -> tuple[Path, Path, str]:
    """Write a new P-256 key pair: `<name>.key` (mode 0600, PKCS#8) and `<name>.pub`.

    Refuses to overwrite an existing key: losing a private key is the one mistake rotation cannot
    undo. Returns (private path, public path, key id).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (private, public):
        if path.exists():
            raise KilnError(f"{path}: already exists; keep it, or choose another --name to "
                            "rotate (trust both public keys until old bundles are re-signed)")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = public_pem(key.public_key())
    written: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path, data, mode in ((private, pem, 0o600), (public, pub, 0o644)):
            _write_new(path, data, mode)
            written.append(path)
        fsync_dir(directory)
    except OSError as exc:  # nothing half-written: a private key without its public one goes
        for path in written:
            path.unlink(missing_ok=True)
        raise KilnError(f"{exc.filename or directory}: cannot write the key pair "
                        f"({exc.strerror or exc}); choose a writable directory with --dir"
                        ) from None
    return private, public, key_id(pub)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` (never over an existing file) with `data`, durable, with exactly `mode`
    (O_CREAT's mode is masked by the umask; 0600 for a private key is what we promise)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)


def _pem_blocks(data: bytes) -> list[bytes]:
    """Split concatenated PEM text into blocks (BEGIN ... END lines)."""
    blocks, start = [], data.find(_PEM_BEGIN)
    while start != -1:
        end = data.find(b"-----END ", start)
        if end == -1:
            break
        stop = data.find(b"-----", end + 9)
        stop = len(data) if stop == -1 else stop + 5
        blocks.append(data[start:stop].strip() + b"\n")
        start = data.find(_PEM_BEGIN, stop)
    return blocks
