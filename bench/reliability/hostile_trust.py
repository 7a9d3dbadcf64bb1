"""Hostile trust lists against the real `kiln` command: a set REGISTRY_TRUSTED_KEYS must fail closed.

    python bench/reliability/hostile_trust.py            # every generated case, three commands each
    python bench/reliability/hostile_trust.py --quick    # a sample, one command each

The cases are made by code: values with no key in them (blank, separators), directories with no
key files, files that are not P-256 public keys (other curves, RSA, Ed25519, a private key, a
certificate, broken PEM, an oversized file), things that are not regular files (FIFOs, sockets,
devices, directories named `*.pub`, dangling links), and each of the unusable files next to a good
key. Every one must be refused. Each runs through `kiln bootstrap` of a published file:// bundle
(alternately unsigned and signed by a key not in the list), `kiln bootstrap` from an OCI
reference on a closed loopback port (the refusal must come before any connection: a fetch there
is exit 1), and `kiln verify-signature` of a signed dist.

Counted: cases (case x command), clean refusals (exit 7, one `kiln:` line, no traceback), wrong
outputs (exit 0 where it should refuse), other exits, tracebacks, hangs (killed after 10 s), and
the largest peak RSS of the child processes (getrusage(RUSAGE_CHILDREN).ru_maxrss). A wrong
output, another exit or a hang is a violation. Never asserts.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row

WALL = 10.0  # seconds; longer is a hang
SECP112R1_PUB = (b"-----BEGIN PUBLIC KEY-----\n"
                 b"MDIwEAYHKoZIzj0CAQYFK4EEAAYDHgAEViDqLM9MHwgmgS2KzdghkMHOWG4WLlUD\n"
                 b"V1+mFw==\n-----END PUBLIC KEY-----\n")  # a curve OpenSSL knows, cryptography not
SEP = os.pathsep


@dataclass(frozen=True)
class Case:
    name: str
    value: str  # the REGISTRY_TRUSTED_KEYS value


@dataclass
class Tally:
    cases: int = 0
    clean: int = 0
    wrong: int = 0
    other: int = 0
    tracebacks: int = 0
    hangs: int = 0


def run(quick: bool) -> list[Row]:
    """One row: every case through the commands (quick: a sample, one command each)."""
    with scratch() as base:
        return [hostile_trust_row(base, quick)]


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="kiln-rel-trust-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def hostile_trust_row(base: Path, quick: bool) -> Row:
    from distfactory import make_dist
    from modelkiln import signing
    from modelkiln.publish import publish_bundle

    good = signing.generate(base / "keys", "publisher")[1]
    stranger = signing.generate(base / "keys", "stranger")[0]
    stranger_key = signing.load_signing_key({signing.KEY_FILE_ENV: str(stranger)})
    unsigned = publish_bundle(make_dist(base / "u", weights=5_000), str(base / "unsigned"))
    foreign_dist = make_dist(base / "f", weights=5_000)
    signing.sign_dist(foreign_dist, stranger_key)
    foreign = publish_bundle(foreign_dist, str(base / "foreign"))
    cases, listener = generate(base / "cases", good)
    commands = targets(base, [unsigned.archive_uri, foreign.archive_uri], foreign_dist)
    tally, row = Tally(), Row("hostile trust lists through kiln bootstrap / verify-signature")
    try:
        for i, case in enumerate(cases[::4] if quick else cases):
            chosen = [commands[i % len(commands)]] if quick else commands
            for k, command in enumerate(chosen):
                label, argv, env = command(case, i + k)
                _trial(base, f"{case.name} via {label}", argv, env, tally, row)
        control = commands[0](Case("good key", str(good)), 0)
        _control(base, control, row)
    finally:
        listener.close()
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    row.trials = tally.cases
    row.notes.insert(0, f"{tally.cases} cases ({len(cases)} trust lists): {tally.clean} clean "
                        f"refusals, {tally.wrong} wrong outputs (exit 0), {tally.other} other "
                        f"exits, {tally.tracebacks} tracebacks, {tally.hangs} hangs (>{WALL:.0f} "
                        f"s); max child RSS {rss:.0f} MiB (RUSAGE_CHILDREN)")
    return row


Command = Callable[[Case, int], tuple[str, list[str], dict[str, str]]]


def targets(base: Path, uris: list[str], signed_dist: Path) -> list[Command]:
    """The three commands a trust list is given to; each gets a fresh runtime directory."""
    kiln = [sys.executable, "-m", "modelkiln.cli"]

    def tarball(case: Case, n: int) -> tuple[str, list[str], dict[str, str]]:
        return ("bootstrap (file://)", [*kiln, "bootstrap"], {
            "MODEL_BACKEND": "pytorch", "MODEL_BUNDLE_S3_URI_PYTORCH": uris[n % len(uris)],
            "REGISTRY_RUNTIME_DIR": str(base / "rt" / str(n)), "REGISTRY_TRUSTED_KEYS": case.value})

    def oci(case: Case, n: int) -> tuple[str, list[str], dict[str, str]]:
        return ("bootstrap (OCI, closed port)", [*kiln, "bootstrap"], {
            "MODEL_BACKEND": "pytorch", "MODEL_BUNDLE_OCI_REF": "127.0.0.1:9/models/x:1.0.0",
            "REGISTRY_RUNTIME_DIR": str(base / "rt-oci" / str(n)),
            "REGISTRY_TRUSTED_KEYS": case.value})

    def verify(case: Case, n: int) -> tuple[str, list[str], dict[str, str]]:
        return ("verify-signature", [*kiln, "verify-signature", str(signed_dist)],
                {"REGISTRY_TRUSTED_KEYS": case.value})

    return [tarball, oci, verify]


def _environ(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KILN_SIGNING", "REGISTRY_", "MODEL_BUNDLE", "MODEL_BACKEND"))}
    return {**env, **extra}


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int | None, str]:
    """(exit status, stderr), or (None, "") when it ran past WALL (then killed, group and all)."""
    proc = subprocess.Popen(argv, cwd=cwd, env=_environ(env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=WALL)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, ""
    return proc.returncode, err


def _trial(base: Path, name: str, argv: list[str], env: dict[str, str], tally: Tally,
           row: Row) -> None:
    tally.cases += 1
    code, err = _run(argv, env, base)
    if code is None:
        tally.hangs += 1
        row.violation(f"{name}: still running after {WALL:.0f} s (killed)")
    elif "Traceback" in err:
        tally.tracebacks += 1
        row.crashed(f"{name}: traceback, {err.strip().splitlines()[-1][:160]}")
    elif code == 0:
        tally.wrong += 1
        row.violation(f"{name}: exit 0, the list was taken as 'no signatures required'")
    elif code == 7 and err.startswith("kiln: ") and err.count("\n") == 1:
        tally.clean += 1
    else:
        tally.other += 1
        row.violation(f"{name}: exit {code}: {err.strip()[:160]}")


def _control(base: Path, command: tuple[str, list[str], dict[str, str]], row: Row) -> None:
    """A good key refuses the unsigned bundle for its signature, not for the list."""
    _, argv, env = command
    code, err = _run(argv, env, base)
    if code != 7 or "not found, and REGISTRY_TRUSTED_KEYS" not in err:
        row.crashed(f"control (a good key, unsigned bundle): exit {code}: {err.strip()[:160]}")


# ------------------------------------------------------------------------------ the cases
def generate(root: Path, good: Path) -> tuple[list[Case], socket.socket]:
    """Every hostile trust list, made under `root`; and the listening socket one case names
    (kept open while the cases run)."""
    root.mkdir(parents=True)
    cases = [Case(f"value {v!r}", v) for v in
             ("", " ", "\t", SEP, f" {SEP} ", SEP * 8, f"{SEP} {SEP}\t{SEP}", "\n")]
    for name, make in _directories().items():
        d = root / "dirs" / name
        d.mkdir(parents=True)
        make(d)
        cases.append(Case(f"directory: {name}", str(d)))
        cases.append(Case(f"directory: {name}, listed twice", f"{d}{SEP}{d}{SEP}"))
    files, listener = _files(root / "files")
    for name, path in files.items():
        cases.append(Case(f"file: {name}", str(path)))
        cases.append(Case(f"good key, then {name}", f"{good}{SEP}{path}"))
        cases.append(Case(f"{name}, then good key", f"{path}{SEP}{good}"))
    for name, entry in _bad_entries(root / "entries").items():
        d = root / "dirs-with-good" / name
        d.mkdir(parents=True)
        (d / "good.pub").write_bytes(good.read_bytes())
        entry(d / "bad.pub")
        cases.append(Case(f"directory: good key and {name}", str(d)))
    return cases, listener


def _directories() -> dict[str, Callable[[Path], None]]:
    """Directories that hold no key a trust list reads."""
    def write(names: dict[str, bytes]) -> Callable[[Path], None]:
        def make(d: Path) -> None:
            for n, data in names.items():
                (d / n).write_bytes(data)
        return make

    pem = b"-----BEGIN PUBLIC KEY-----\n"
    return {"empty": write({}),
            "only README": write({"README": b"keys go here\n"}),
            "keys under other suffixes": write({"k.txt": pem, "k.pub.bak": pem, "k.PUB": pem,
                                                "k.crt": pem, ".pub": b""}),
            "a subdirectory of keys": lambda d: (d / "sub").mkdir()}


def _bad_entries(root: Path) -> dict[str, Callable[[Path], None]]:
    """Entries named *.pub that a trust directory must refuse, not skip."""
    root.mkdir(parents=True)
    return {"a FIFO named bad.pub": lambda p: os.mkfifo(p),
            "a link to /dev/zero named bad.pub": lambda p: p.symlink_to("/dev/zero"),
            "a dangling link named bad.pub": lambda p: p.symlink_to(root / "gone"),
            "a directory named bad.pub": lambda p: p.mkdir(),
            "an empty bad.pub": lambda p: p.write_bytes(b"")}


def _files(root: Path) -> tuple[dict[str, Path], socket.socket]:
    """Paths that are not a usable P-256 public key file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    root.mkdir(parents=True)
    spki = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    p256 = ec.generate_private_key(ec.SECP256R1())
    other = {"P-384": ec.generate_private_key(ec.SECP384R1()).public_key(),
             "secp256k1": ec.generate_private_key(ec.SECP256K1()).public_key(),
             "brainpoolP256r1": ec.generate_private_key(ec.BrainpoolP256R1()).public_key(),
             "Ed25519": ed25519.Ed25519PrivateKey.generate().public_key(),
             "RSA-2048": rsa.generate_private_key(65537, 2048).public_key()}
    good_pem = p256.public_key().public_bytes(*spki)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "kiln")])
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(p256.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(p256, hashes.SHA256()))
    contents = {f"{k} public key": v.public_bytes(*spki) for k, v in other.items()}
    contents.update({
        "secp112r1 public key (unsupported curve)": SECP112R1_PUB,
        "a P-256 private key": p256.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()),
        "a certificate": cert.public_bytes(serialization.Encoding.PEM),
        "an empty file": b"",
        "text, no PEM": b"ssh-ed25519 AAAAC3Nza not a pem key\n",
        "PEM cut after BEGIN": good_pem[:40],
        "PEM with broken base64": good_pem.replace(b"M", b"!", 3),
        "PEM with a truncated body": good_pem[:60] + b"\n-----END PUBLIC KEY-----\n",
        "binary garbage": bytes(range(256)) * 8,
    })
    files = {}
    for i, (label, data) in enumerate(contents.items()):
        files[label] = root / f"k{i}.pub"
        files[label].write_bytes(data)
    big = root / "big.pub"
    with open(big, "wb") as f:
        f.truncate(64 << 20)  # sparse, over the 1 MiB key-file bound
    files["a 64 MiB file"] = big
    fifo = root / "fifo.pub"
    os.mkfifo(fifo)
    files["a FIFO"] = fifo
    sock_path = root / "sock.pub"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    listener.listen(1)
    files["a listening unix socket"] = sock_path
    for dev in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/tty"):
        files[dev] = Path(dev)
    files["a missing path"] = root / "nope.pub"
    return files, listener


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a sample, one command per case")
    args = parser.parse_args()
    (row,) = run(args.quick)
    print(f"{row.name}: {row.trials} trials, {row.violations} violations, "
          f"{row.tracebacks} tracebacks")
    for note in row.notes:
        print(f"  note: {note}")
    return 1 if row.violations or row.tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
