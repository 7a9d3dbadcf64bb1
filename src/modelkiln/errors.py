"""One exception root, a few leaves, each mapped to one exit code.

The CLI turns a `KilnError` into its message and `exit_code`; nothing below the CLI prints. Every
leaf carries structured fields so tests (and callers) need not parse messages, and every message ends
with what to do about it. `ExitCode` is the one table of exit statuses (the README's table is
checked against it by the test suite).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    """Every status `kiln` exits with, and which error leaf (or CLI outcome) produces it."""

    OK = 0
    FAILURE = 1  # build, publish or I/O failure: BuildError, PublishError, StoreError, KilnError
    DRIFT = 2  # hash drift, bytes differ from the locked or published hash: DriftError
    SPEC = 3  # invalid spec or registry file: SpecError
    CAPABILITY = 4  # capability mismatch: CapabilityError
    CONFLICT = 5  # immutable version conflict: ConflictError
    OUT_OF_DATE = 6  # `kiln plan --check`: something would run
    SIGNATURE = 7  # signature refused, missing, untrusted key or not what was signed: SignatureError
    USAGE = 64  # command-line usage error: UsageError (EX_USAGE; argparse's own 2 reads as drift)
    INTERRUPTED = 130  # interrupted (Ctrl-C)


class KilnError(Exception):
    """Root of every error modelkiln raises on purpose. Exit code 1 unless a leaf says otherwise."""

    exit_code: ExitCode = ExitCode.FAILURE


class BuildError(KilnError):
    """A stage failed: bad model files, a failed load check, a failed parity gate."""


class PublishError(KilnError):
    """An upload, download or store write failed after its retries."""


class StoreError(KilnError):
    """The model store is missing, unreadable or in a state an operation cannot proceed from."""


class UsageError(KilnError):
    """The command line names something that is not there: a spec file, a task, a backend, a
    store or registry directory. Raised where the name is looked up, so `kiln` and `doit` alike
    exit with the usage code instead of building or listing nothing."""

    exit_code = ExitCode.USAGE


class SignatureError(KilnError):
    """A bundle's signature is missing where one is required, made by a key that is not trusted,
    or does not match the manifest, the bytes, or the name and version it is served under."""

    exit_code = ExitCode.SIGNATURE


class CapabilityError(KilnError):
    """A registry entry lacks a capability or role that a caller required."""

    exit_code = ExitCode.CAPABILITY

    def __init__(self, name: str, missing: list[str], have: list[str]):
        self.name, self.missing, self.have = name, list(missing), list(have)
        super().__init__(
            f"{name}: missing capability {', '.join(missing)} (has: {', '.join(have) or 'none'}); "
            f"pick an entry that has it (`kiln registry list --json`) or add it to the curated entry"
        )


class ConflictError(PublishError):
    """A published version already exists with different bytes: versions are immutable."""

    exit_code = ExitCode.CONFLICT

    def __init__(self, location: str, existing: str, new: str):
        self.location, self.existing, self.new = location, existing, new
        super().__init__(
            f"{location}: already published with sha256 {existing}, refusing to overwrite with "
            f"{new}; bump the version in the spec, or pass --force to replace it on purpose"
        )


@dataclass(frozen=True)
class FileChange:
    """One difference between what was locked and what is on disk now."""

    path: str
    kind: str  # "changed" | "missing" | "added"
    expected: str | None = None
    actual: str | None = None

    def __str__(self) -> str:
        if self.kind == "changed":
            return f"changed {self.path}: {self.expected} -> {self.actual}"
        return f"{self.kind} {self.path}"


class DriftError(KilnError):
    """Bytes on disk no longer match the recorded hash."""

    exit_code = ExitCode.DRIFT

    def __init__(self, name: str, changes: list[FileChange], expected: str | None = None,
                 actual: str | None = None, fix: str | None = None):
        self.name, self.changes, self.expected, self.actual = name, list(changes), expected, actual
        lines = [f"{name}: hash drift" + (f" (expected {expected}, got {actual})" if expected else "")]
        lines += [f"  {c}" for c in self.changes]
        lines.append(f"  {fix}" if fix else f"  if the change is intended: `kiln registry lock {name} "
                     "--set-expected`; if not, restore the files from a trusted copy")
        super().__init__("\n".join(lines))


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a spec, pinned to a place in a file.

    Sorted by (file, line, col, key) so reports are stable.
    """

    file: str
    line: int
    col: int
    key: str
    message: str
    hint: str = field(default="", compare=False)

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}:{self.col}: {self.key or '<document>'}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class SpecError(KilnError):
    """One or more problems in spec (or registry) files. Carries every problem, sorted."""

    exit_code = ExitCode.SPEC

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(set(problems))
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} found:"
        super().__init__("\n".join([head, *map(str, self.problems)]))


def display_path(path: Path | str) -> str:
    """A path as a user wants to read it: relative to the working directory when inside it.

    Called for every file a spec check reads, so it works on strings: `os.getcwd()` already has
    no symlinks in it (the kernel answers the physical path), and one `realpath` of the file is
    the only filesystem work (pathlib's resolve() of both, as before, cost ~60 us a call)."""
    text = os.fspath(path)
    try:
        real, cwd = os.path.realpath(text), os.getcwd()
    except (OSError, ValueError):  # the working directory is gone, or a NUL in the path
        return str(Path(text))
    if real == cwd:
        return "."
    base = cwd if cwd.endswith(os.sep) else cwd + os.sep
    return real[len(base):] if real.startswith(base) else str(Path(text))
