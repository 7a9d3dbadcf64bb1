"""Hostile local state: every file modelkiln keeps for itself, replaced by something it must survive.

A state file may be corrupt (garbage bytes, a truncated write), valid JSON of the wrong shape,
JSON nested so deep that a recursive parser overflows, or not a file at all: a FIFO (a read
blocks for ever), a character device (`/dev/zero` never ends), a directory. Whatever is there,
a command must treat it as a miss (rebuild, re-hash, re-parse) or stop with one `kiln:` line,
never print a traceback or hang. `targets` names the files of each kind in a built project;
`poison` puts one hostile thing in place of a file; `judge` reads a command's outcome.

Shared by tests/graph/test_hostile_state.py and bench/reliability/hostile_state.py.
"""
from __future__ import annotations

import os
import resource
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEEP = 100_000  # [[[...]]] this deep overflows a recursive JSON parser (Python's limit is ~1000)

# name -> the bytes that replace a state file (the non-file kinds are made by `poison`)
CONTENTS: dict[str, bytes] = {
    "garbage": bytes(range(256)) * 4,
    "truncated": b'{"format": 1, "bundles": {"x": [',
    "empty": b"",
    "json-list": b"[1, 2, 3]\n",
    "json-wrong-types": (b'{"format": 1, "version": 2, "bundles": {"tiny": [1, [[5, 6]]]},'
                         b' "entries": {"1:2": [1, 2, 3, 4]}, "loader": 1, "data": [],'
                         b' "marks": 7, "key_marks": null, "outputs": [], "inputs": 3,'
                         b' "params_digest": 5, "outputs_aggregate": []}\n'),
    "deep-list": b"[" * DEEP + b"]" * DEEP,
    "deep-object": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
}
SPECIAL = ("half", "fifo", "char-device", "dev-zero-symlink", "directory")
KINDS = (*CONTENTS, *SPECIAL)


def _glob(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if not p.name.startswith("."))


# state kind -> the files of that kind in a built project (each is poisoned in turn)
TARGETS: dict[str, Callable[[Path], list[Path]]] = {
    "verdicts": lambda r: [r / ".kiln" / "verdicts.json"],
    "hashcache": lambda r: [r / ".kiln" / "hashcache.json"],
    "bundle-cache": lambda r: _glob(r, ".kiln/bundles/*.json"),
    "spec-cache": lambda r: _glob(r, ".kiln/specs/*.json"),
    "stamps": lambda r: _glob(r, "build/*/.stamps/*.json")[:1],
    "doit-db": lambda r: [r / ".kiln" / "doit.sqlite3"],
    "locks": lambda r: _glob(r, ".kiln/locks/package_*.lock"),
    # directories modelkiln keeps, with something else in their place
    "bundle-cache-dir": lambda r: [r / ".kiln" / "bundles"],
    "spec-cache-dir": lambda r: [r / ".kiln" / "specs"],
    "locks-dir": lambda r: [r / ".kiln" / "locks"],
    "stamps-dir": lambda r: sorted(r.glob("build/*/.stamps")),
}
# the state a no-op never opens: a task must run for it to be read (locks are taken by a task)
RERUN = {"locks", "locks-dir"}
# a stamp removed so that packaging reruns (and takes its lock)
RERUN_STAMP = "build/{name}/.stamps/package-pytorch.json"


def clear(path: Path) -> None:
    """Remove whatever is at `path` (a file, a link, a FIFO, a directory tree)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def poison(path: Path, kind: str) -> bool:
    """Put hostile state of `kind` at `path`; False when this host cannot make it (mknod
    needs root)."""
    real = path.read_bytes() if kind == "half" and path.is_file() else b""
    clear(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind in CONTENTS:
        path.write_bytes(CONTENTS[kind])
    elif kind == "half":  # a torn write: the first half of what was there
        path.write_bytes(real[: len(real) // 2] if real else CONTENTS["truncated"])
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "char-device":
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 5))  # what /dev/zero is
        except PermissionError:
            return False
    elif kind == "dev-zero-symlink":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_text("x")
    else:
        raise ValueError(kind)
    return True


@dataclass
class Outcome:
    """What one command did with hostile state in place."""

    code: int | None  # None: killed after the timeout (a hang)
    output: str

    @property
    def hang(self) -> bool:
        return self.code is None

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.output

    @property
    def clean(self) -> bool:
        """Exit 0 (a miss: rebuilt or re-checked), or a failure told in one `kiln:` line (or,
        under doit, as the failed task's one-line message)."""
        if self.hang or self.traceback:
            return False
        if self.code == 0:
            return True
        lines = self.output.splitlines()
        told = [line for line in lines if line.startswith("kiln:")]
        failed = [line for line in lines if line.startswith("TaskFailed - taskid:")]
        return 1 <= len(told) + len(failed) <= 2


MEMORY_CAP = 6 << 30  # address space per command: reading /dev/zero whole fails, not the host


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run(argv: list[str], cwd: Path, timeout: float) -> Outcome:
    """Run a command; a hang is killed (its whole process group) after `timeout` seconds."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=_cap_memory,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        return Outcome(None, out)
    return Outcome(proc.returncode, out)
