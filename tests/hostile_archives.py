"""Build hostile bundle archives, publish each with a manifest that matches it, run `kiln bootstrap`.

A case (see hostile_corpus.py) is a small real bundle (the files a serving app needs, plus the
bundle's own manifest.json) with something hostile spliced in. Its published manifest lists every
regular file the archive holds with its true size and sha256, and the archive's true size and
sha256, so the download check passes and what refuses the bundle is the extractor (or, for a bad
version, the bootstrap). `try_case` installs a good version first, then runs the real
`kiln bootstrap` in a subprocess against the hostile one (file:// prefix), and reports what it did:
exit status, stderr, wall and CPU seconds, peak RSS (from wait4, this child only), whether it had
to be killed, whether `current` moved, and every path under the sandbox's parent that changed.

Tar headers are written here by hand (not with `tarfile`) because most of these cannot be written
with it. Shared by tests/artifacts/test_hostile_corpus.py and bench/reliability/archives.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelkiln.artifacts import manifest as mf
from modelkiln.runtime import bootstrap

BLOCK = 512
POSIX, GNU = b"ustar\x0000", b"ustar  \x00"
END = bytes(2 * BLOCK)
GOOD_VERSION, HOSTILE_VERSION = "1.0.0", "9.0.0"
# The bootstrap unpacks into <root>/sandbox/rt/pytorch/versions/.<tmp>/tree: six levels under
# <root>, so UP + "outside/x" names <root>/outside/x, where the canary check looks.
UP = "../" * 6
BASE: dict[str, bytes] = {
    "config.json": b'{"model_type": "bert"}',
    "label_order.json": b'["a"]',
    "model.safetensors": bytes(range(256)) * 4,
    "registry_label_fields.json": b'{"a": "field_a"}',
    "thresholds.json": b'{"a": 0.5}',
    "tokenizer/tokenizer.json": b'{"vocab": ["a", "b"]}',
}


def header(name: bytes, size: int = 0, kind: bytes = b"0", *, link: bytes = b"",
           prefix: bytes = b"", magic: bytes = POSIX, size_field: bytes | None = None,
           checksum: bytes | None = None) -> bytes:
    """One 512-byte tar header with a correct checksum unless `checksum` says otherwise."""
    assert len(name) <= 100 and len(link) <= 100 and len(prefix) <= 155
    block = bytearray(BLOCK)
    block[0:len(name)] = name
    block[100:108] = b"0000644\0"
    block[108:116] = block[116:124] = b"0000000\0"
    block[124:136] = size_field if size_field is not None else f"{size:011o}\0".encode()
    block[136:148] = b"00000000000\0"
    block[156:157] = kind
    block[157:157 + len(link)] = link
    block[257:265] = magic
    block[345:345 + len(prefix)] = prefix
    block[148:156] = b" " * 8
    block[148:156] = checksum if checksum is not None else f"{sum(block):06o}\0 ".encode()
    return bytes(block)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: str | bytes, data: bytes = b"", kind: bytes = b"0", **kw: bytes) -> bytes:
    """A member with `data`; a name over 100 bytes goes into a pax `path` record."""
    raw = name.encode() if isinstance(name, str) else name
    if len(raw) > 100:
        return pax(rec(b"path", raw)) + member(b"long-name-placeholder", data, kind, **kw)
    return header(raw, len(data), kind, **kw) + pad(data)


def special(name: str, kind: bytes, link: str = "") -> bytes:
    return header(name.encode(), 0, kind, link=link.encode())


def rec(key: bytes, value: bytes) -> bytes:
    """One pax record, `<length> <key>=<value>\\n`, its length counting its own digits."""
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def pax(records: bytes, kind: bytes = b"x") -> bytes:
    return header(b"././@PaxHeader", len(records), kind) + pad(records)


def longname(value: bytes, kind: bytes = b"L") -> bytes:
    return header(b"././@LongLink", len(value) + 1, kind, magic=GNU) + pad(value + b"\0")


def gzip_member(data: bytes, level: int = 9) -> bytes:
    z = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return z.compress(data) + z.flush()


@dataclass(frozen=True)
class Listed:
    """A file as the published manifest lists it."""

    path: str
    size: int
    sha256: str

    @classmethod
    def of(cls, path: str, data: bytes) -> Listed:
        return cls(path, len(data), hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class Hostile:
    """What one case splices into the good bundle (between its files and its manifest.json)."""

    segments: Sequence[tuple[bytes, int]] = ()  # (tar bytes, times): each one gzip member
    listed: Sequence[Listed] = ()  # regular files among them, as the manifest lists them
    before_end: bytes = b""  # tar bytes after the bundle's manifest.json, before the end marker
    tail: bytes = b""  # tar bytes after the end-of-archive marker
    mangle: Callable[[bytes], bytes] | None = None  # applied to the finished .tar.gz
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the bootstrap
    version: str = HOSTILE_VERSION


@dataclass(frozen=True)
class Case:
    name: str
    expect: str  # a phrase the one `kiln:` line must contain
    make: Callable[[Path], Hostile]  # given the directory outside the sandbox (the canary)


def one(data: bytes, *listed: Listed, **kw: object) -> Hostile:
    """The common shape: one tar segment, the files it lists."""
    return Hostile(segments=[(data, 1)], listed=listed, **kw)  # type: ignore[arg-type]


def publish(bucket: Path, hostile: Hostile) -> str:
    """Write bundle.tar.gz and its matching published manifest.json; return the archive URI."""
    good = b"".join(member(p + "/", kind=b"5") if p.endswith("/") else member(p, BASE[p])
                    for p in sorted([*BASE, "tokenizer/"]))
    files = {e.path: e for e in [*(Listed.of(p, d) for p, d in BASE.items()), *hostile.listed]}
    manifest = mf.build(name="hostile", version=hostile.version, backend="pytorch",
                        files=[{"path": e.path, "size": e.size, "sha256": e.sha256}
                               for e in sorted(files.values(), key=lambda e: e.path)],
                        inputs={}, spec_digest="0" * 64, tools={"modelkiln": "test"})
    parts = [gzip_member(good)]
    for data, times in hostile.segments:
        parts.append(gzip_member(data) * times)
    parts.append(gzip_member(member(mf.MANIFEST, mf.dumps(manifest)) + hostile.before_end + END
                             + hostile.tail))
    archive = b"".join(parts)
    if hostile.mangle is not None:
        archive = hostile.mangle(archive)
    bucket.mkdir(parents=True, exist_ok=True)
    (bucket / mf.ARCHIVE).write_bytes(archive)
    published = mf.with_archive(manifest, len(archive), hashlib.sha256(archive).hexdigest())
    (bucket / mf.MANIFEST).write_bytes(mf.dumps(published))
    return (bucket / mf.ARCHIVE).as_uri()


def bootstrap_env(uri: str, runtime: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without anything the bootstrap reads, then the bootstrap's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KILN_", "MODEL_", "REGISTRY_"))}
    return {**env, "MODEL_BACKEND": "pytorch", "MODEL_BUNDLE_S3_URI_PYTORCH": uri,
            "REGISTRY_RUNTIME_DIR": str(runtime), **(extra or {})}


@dataclass(frozen=True)
class Outcome:
    """What one `kiln` process did."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float  # wall clock
    cpu_seconds: float  # user + system of the child: what load on a shared machine cannot stretch
    max_rss_mib: float
    hung: bool  # killed at the wall-clock limit

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr

    @property
    def clean_refusal(self) -> bool:
        lines = self.stderr.splitlines()
        return (not self.hung and self.returncode == 1 and len(lines) == 1
                and lines[0].startswith("kiln: ") and not self.traceback)


def _kiln() -> list[str]:
    script = Path(sys.executable).with_name("kiln")  # the console script a user runs
    return [str(script)] if script.exists() else [sys.executable, "-m", "modelkiln.cli"]


# A fresh, small interpreter between pytest and the command: a child's peak RSS counts the memory
# of the process it was forked from (until exec), so wait4 on a child of pytest would report
# pytest's. The shim also enforces the wall limit, so a killed command's usage is still known.
_SHIM = """
import json, os, signal, sys, time
report, limit, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
pid = os.fork()
if pid == 0:
    os.execv(argv[0], argv)
deadline, killed = time.monotonic() + limit, False
while True:
    done, status, ru = os.wait4(pid, os.WNOHANG)
    if done:
        break
    if not killed and time.monotonic() > deadline:
        os.kill(pid, signal.SIGKILL)
        killed = True
    time.sleep(0.005)
with open(report, "w") as f:
    json.dump([os.waitstatus_to_exitcode(status), ru.ru_maxrss, ru.ru_utime + ru.ru_stime,
               killed], f)
"""


def run_kiln(args: Sequence[str], env: dict[str, str], cwd: Path, wall_limit: float) -> Outcome:
    """Run `kiln args...`; kill it after `wall_limit` seconds. Peak RSS is kiln's own."""
    return run_command([*_kiln(), *args], env, cwd, wall_limit)


def run_command(argv: Sequence[str], env: dict[str, str], cwd: Path,
                wall_limit: float) -> Outcome:
    """Run `argv` (argv[0] a path); kill it after `wall_limit` seconds; its own peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        report, out, err = Path(tmp, "usage.json"), Path(tmp, "out"), Path(tmp, "err")
        with open(out, "wb") as fout, open(err, "wb") as ferr:
            start = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-c", _SHIM, str(report), str(wall_limit), *argv],
                stdin=subprocess.DEVNULL, stdout=fout, stderr=ferr, env=env, cwd=cwd,
                start_new_session=True)
            try:
                proc.wait(wall_limit + 60)  # the shim kills at wall_limit; this is a backstop
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            seconds = time.monotonic() - start
        code, rss_kib, cpu, hung = (json.loads(report.read_text()) if report.exists()
                                    else (-9, 0, 0.0, True))
        return Outcome(code, out.read_text(errors="replace"), err.read_text(errors="replace"),
                       seconds, cpu, rss_kib / 1024, hung)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root`: files with size and mtime, links with target, directories."""
    seen: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                seen[rel] = "link -> " + os.readlink(path)
            elif os.path.isdir(path):
                seen[rel] = "dir"
            else:
                seen[rel] = f"file {st.st_size} {st.st_mtime_ns}"
    return seen


@dataclass(frozen=True)
class Trial:
    case: str
    outcome: Outcome
    current_before: str
    current_after: str | None
    changed: list[str]  # paths under the root that appeared, vanished or changed


def try_case(case: Case, root: Path, wall_limit: float) -> Trial:
    """Install a good version under `root`, then run `kiln bootstrap` against the hostile one."""
    sandbox, runtime = root / "sandbox", root / "sandbox" / "rt"
    (root / "outside").mkdir(parents=True)
    good_uri = publish(sandbox / "good", Hostile(version=GOOD_VERSION))
    bootstrap(bootstrap_env(good_uri, runtime))
    current = runtime / "pytorch" / "current"
    before_link = os.readlink(current)
    hostile = case.make(root / "outside")
    uri = publish(sandbox / "bucket", hostile)
    before = snapshot(root)
    outcome = run_kiln(["bootstrap"], bootstrap_env(uri, runtime, hostile.env), sandbox,
                       wall_limit)
    after = snapshot(root)
    lock = str(Path("sandbox", "rt", "pytorch", ".lock"))  # rewritten by every bootstrap
    changed = sorted(p for p in before.keys() | after.keys()
                     if before.get(p) != after.get(p) and p != lock)
    after_link = os.readlink(current) if current.is_symlink() else None
    return Trial(case.name, outcome, before_link, after_link, changed)
