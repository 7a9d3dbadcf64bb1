"""Filesystem primitives for the model store: tree scans, hashing, durability, OS-error lines.

Kept apart from `writer.py` so the store reads as its protocol (stage, seal, rename, swap) and this
module as the mechanics. The writer lock is `artifacts.lock.FileLock` (the one file lock). Hashing goes through `digest.sha256_file` (the one file-hashing function,
looked up on its module at call time so a test can count the reads); we only spread files over a
few threads, which helps because hashlib and file reads release the GIL.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import digest as _digest
from ..artifacts.atomic import fsync_dir, fsync_path
from ..errors import FileChange, KilnError, StoreError

StatKey = tuple[int, int, int, int]
Digests = dict[str, tuple[int, str]]  # relpath -> (size, sha256)
DELETING_SUFFIX = ".deleting"
Known = Mapping[str, tuple[StatKey, str]]  # relpath -> (stat key when the digest was taken, sha256)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def stat_key(st: os.stat_result) -> StatKey:
    """(device, inode, size, mtime_ns): unchanged key means unchanged bytes for our own staging."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class CannotRead(StoreError):
    """A file of the store exists but this process may not read it: exit 1, never drift."""


_FIXES = {
    errno.ENOSPC: "free space on that filesystem and re-run (what was being written is not "
                  "visible; the next run sweeps its debris)",
    errno.EDQUOT: "free space or raise the disk quota and re-run (what was being written is not "
                  "visible; the next run sweeps its debris)",
    errno.EACCES: "check the permissions of that path: run as its owner, or give every writer a "
                  "shared group with write access",
    errno.EROFS: "that filesystem is read-only: point MODEL_STORE_ROOT / --store-root (or the "
                 "registry directory) at a writable location",
    errno.EIO: "the device reported an I/O error: check it (dmesg) before trusting its files",
}
_FIXES[errno.EPERM] = _FIXES[errno.EACCES]


def os_error(exc: OSError, where: Path | str, cls: type[KilnError] = StoreError) -> KilnError:
    """One line for an OS error: the path it happened on, what happened, and the fix."""
    path = exc.filename if exc.filename is not None else where
    fix = _FIXES.get(exc.errno or 0, "fix the cause and re-run")
    if cls is CannotRead and exc.errno in (errno.EACCES, errno.EPERM):
        fix = ("cannot read it: run as a user who may read the store, or restore read permission "
               "(stored files are written readable by everyone the umask allows)")
    return cls(f"{os.fsdecode(path)}: {exc.strerror or exc}; {fix}")


@contextlib.contextmanager
def os_errors(where: Path | str, cls: type[KilnError] = StoreError) -> Iterator[None]:
    """Turn any OSError raised inside into one `kiln:` line (exit 1) naming the path and fix."""
    try:
        yield
    except OSError as exc:
        raise os_error(exc, where, cls) from None


@dataclass
class Tree:
    """A scan of a directory: regular files by relative path, and everything that is not one."""

    files: dict[str, os.stat_result] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)  # relpaths of subdirectories, parents first
    odd: dict[str, str] = field(default_factory=dict)  # relpath -> "symlink" | "special file"


def scan(root: Path, exclude: frozenset[str] = frozenset()) -> Tree:
    """Walk `root` without following symlinks; `exclude` names top-level entries to skip.

    A symlink is never followed and never hashed: it is reported in `odd` so a file replaced by a
    link to an identical copy still shows up as drift.
    """
    tree = Tree()
    stack = [("", root)]
    while stack:
        prefix, directory = stack.pop()
        try:
            listing = list(os.scandir(directory))
        except OSError as exc:
            raise os_error(exc, directory, CannotRead) from None
        for entry in listing:
            rel = prefix + entry.name
            if not prefix and entry.name in exclude:
                continue
            if entry.is_symlink():
                tree.odd[rel] = "symlink"
            elif entry.is_dir(follow_symlinks=False):
                tree.dirs.append(rel)
                stack.append((rel + "/", Path(entry.path)))
            elif entry.is_file(follow_symlinks=False):
                tree.files[rel] = entry.stat(follow_symlinks=False)
            else:
                tree.odd[rel] = "special file"
    return tree


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def hash_tree(root: Path, tree: Tree, *, known: Known | None = None,
              fsync: bool = False, workers: int | None = None) -> Digests:
    """sha256 (and size) of every regular file in `tree`, largest first over a few threads.

    Trust rule for `known` (digests a caller took moments ago in its own private staging, e.g. while
    copying the file in): one is reused only if it is a well-formed sha256 (64 lowercase hex) AND
    the file's stat key (device, inode, size, mtime_ns) is still the one recorded with it; anything
    else is read and hashed. The size recorded is always the stat's, never the caller's. A digest
    that passes both checks but is simply wrong (a caller's bug) is not detectable without reading
    the bytes, which is the cost `known` exists to avoid: it is written to the manifest as given
    and the version then fails `verify` (which never uses `known`, re-reads every byte, and runs
    before every `rollback`), naming the file. With `fsync`, every file is also flushed to disk on
    its own I/O threads, concurrently with the hashing: the flush waits on the disk while the hash
    works from the page cache, so the cost is the slower of the two, not their sum.
    """
    known = known or {}

    def one(rel: str) -> tuple[str, tuple[int, str]]:
        st = tree.files[rel]
        hit = known.get(rel)
        trusted = (hit is not None and hit[0] == stat_key(st) and isinstance(hit[1], str)
                   and _SHA256.fullmatch(hit[1]) is not None)
        if trusted and hit is not None:
            return rel, (st.st_size, hit[1])
        try:
            return rel, (st.st_size, _digest.sha256_file(root / rel))
        except OSError as exc:
            raise os_error(exc, root / rel, CannotRead) from None

    order = sorted(tree.files, key=lambda r: -tree.files[r].st_size)
    threads = workers or default_workers()
    if threads == 1:  # strictly sequential: deterministic order of every read and flush
        out: Digests = {}
        for rel in order:
            out.update([one(rel)])
            if fsync:
                fsync_path(root / rel)
        return out
    n = min(threads, max(1, len(order)))
    with contextlib.ExitStack() as stack:
        flushes = []
        if fsync and order:
            io = stack.enter_context(ThreadPoolExecutor(min(4, len(order)), "kiln-fsync"))
            flushes = [io.submit(fsync_path, root / rel) for rel in order]
        out = dict(stack.enter_context(ThreadPoolExecutor(n, "kiln-hash")).map(one, order))
        for f in flushes:
            f.result()
    return out


def diff(expected: Mapping[str, tuple[int, str]], actual: Mapping[str, tuple[int, str]],
         odd: Mapping[str, str]) -> list[FileChange]:
    """Every changed, missing and added file between a recorded list and a fresh scan."""
    changes = []
    for rel, kind in odd.items():
        if rel in expected:
            changes.append(FileChange(rel, "changed", expected[rel][1], f"{kind}, not a regular file"))
        else:
            changes.append(FileChange(rel, "added", None, kind))
    for rel, (_size, digest) in actual.items():
        if rel not in expected:
            changes.append(FileChange(rel, "added", None, digest))
        elif expected[rel][1] != digest:
            changes.append(FileChange(rel, "changed", expected[rel][1], digest))
    changes += [FileChange(rel, "missing", d) for rel, (_s, d) in expected.items()
                if rel not in actual and rel not in odd]
    return sorted(changes, key=lambda c: (c.path, c.kind))


def fsync_dirs(root: Path, files: Mapping[str, object]) -> None:
    """fsync every directory that holds one of `files`, deepest first, then `root` itself."""
    dirs = {str(Path(rel).parent) for rel in files} | {"."}
    for rel in sorted(dirs, key=lambda d: (-d.count("/"), d), reverse=False):
        fsync_dir(root / rel)


def remove_tree(path: Path) -> None:
    """Delete a directory so that no crash leaves a half-deleted tree under its real name.

    The tree is first renamed to a dot-name ending in `.deleting` (atomic), which listings ignore
    and the next locked operation sweeps.
    """
    if not path.exists() and not path.is_symlink():
        return
    doomed = path.with_name(f".{path.name}{DELETING_SUFFIX}")
    if doomed.exists():
        shutil.rmtree(doomed, ignore_errors=True)
    try:
        os.rename(path, doomed)
    except OSError as exc:
        raise StoreError(f"{path}: cannot remove ({exc.strerror}); check permissions on "
                         f"{path.parent}") from None
    fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)
