"""Unpack a bundle tarball without trusting it.

`tarfile.extractall` will follow a member's name or link wherever it points, and `tarfile` itself
cannot read untrusted headers in bounded time and memory (see `tarheaders`). A bundle arrives
from the network, so `safe_extract` reads headers with `tarheaders.TarReader` and accepts only
what a modelkiln bundle contains: regular files and directories with plain relative UTF-8 names,
at most MAX_DEPTH levels deep. It refuses everything else before writing a byte of it: absolute
names, `..`, symlinks, hardlinks, devices, fifos, every sparse form, duplicate names, a file where
a directory is (or will be) needed, and archives past the host's limits (`extract_limits`: total
bytes, file count, inflate ratio; a manifest's sizes can only tighten them), which are checked
from each member's header before its data is read. It streams the archive once, writes with
O_EXCL and O_NOFOLLOW into a fresh directory, and on any refusal empties that directory again,
so a caller never sees a half-extracted tree. Every failure is an UnsafeArchive (a KilnError).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KilnError
from .atomic import fsync_dir
from .digest import HashingWriter
from .extract_limits import Budget, Limits
from .gunzip import GzipCorrupt, GzipStream
from .tarheaders import BadTar, Member, TarReader

CHUNK = 256 << 10
UNKNOWN_SIZE_CAP = 16 << 20  # a member allowed with size None (the bundle's manifest.json)
MAX_NAME = 1024  # bytes of a member name; bundle names are tens of bytes
MAX_COMPONENT = 255
MAX_DEPTH = 32
_KINDS = {b"1": "hardlink", b"2": "symlink", b"3": "character device", b"4": "block device",
          b"6": "fifo", b"7": "contiguous file", b"S": "sparse file", b"V": "volume label",
          b"M": "multi-volume continuation", b"D": "GNU dump directory"}
_FIX = "fetch the bundle again from a trusted publisher, or rebuild it"


def _show(name: str) -> str:
    """A member name for a one-line message: repr (escapes line breaks), long ones cut."""
    return repr(name) if len(name) <= 120 else repr(name[:100]) + f"... ({len(name)} characters)"


class UnsafeArchive(KilnError):
    """An archive member (or the archive itself) that safe_extract will not write."""

    def __init__(self, archive: Path | str, member: str, why: str, fix: str = _FIX):
        self.archive, self.member, self.why = str(archive), member, why
        super().__init__(f"{archive}: member {_show(member)}: {why}; refusing to unpack it "
                         f"({fix})")


@dataclass
class _Tree:
    """What has been unpacked so far, to refuse duplicates and file/directory clashes."""

    files: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=set)  # directory members
    made: set[str] = field(default_factory=set)  # every directory created (members and parents)
    members: int = 0
    total: int = 0


def check_name(name: str) -> str | None:
    """Why `name` is not a safe relative member name, or None when it is."""
    if not name:
        return "empty name"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if name.startswith("/"):
        return "absolute path"
    if name.count("/") >= MAX_DEPTH:
        return f"path {name.count('/') + 1} levels deep (at most {MAX_DEPTH})"
    if len(encoded) > MAX_NAME:
        return f"name of {len(encoded)} bytes (at most {MAX_NAME})"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name) or "\\" in name:
        return "control character or backslash in name"
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            return f"path component {part!r} (only plain relative names are allowed)"
        if len(part.encode("utf-8")) > MAX_COMPONENT:
            return f"path component longer than {MAX_COMPONENT} bytes"
    return None


def _empty(dest: Path) -> None:
    for entry in list(dest.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


def _prepare(dest: Path) -> None:
    if dest.is_symlink():
        raise KilnError(f"{dest}: extraction target is a symlink; pass a fresh, empty directory")
    try:
        dest.mkdir(parents=True, exist_ok=True)
        busy = any(dest.iterdir())
    except OSError as exc:
        raise KilnError(f"{dest}: cannot use it as the extraction target ({exc.strerror}); "
                        "pass a fresh, empty directory you can write to") from None
    if busy:
        raise KilnError(f"{dest}: extraction target is not empty; pass a fresh, empty directory")


def safe_extract(archive: Path, dest: Path, max_bytes: int | None = None, *,
                 sizes: Mapping[str, int | None] | None = None,
                 sha256s: Mapping[str, str] | None = None, durable: bool = True,
                 limits: Limits | None = None, reuse: Mapping[str, Path] | None = None
                 ) -> list[str]:
    """Unpack the gzip tarball `archive` into the empty directory `dest`; return its files, sorted.

    `limits` are the host's ceilings (default: `Limits.from_env()`, the KILN_EXTRACT_* variables);
    `max_bytes` and the sum of `sizes` can only lower the byte ceiling. `sizes`, when given, lists
    every file the archive may hold with its exact size (None: any size up to 16 MiB); anything
    unlisted or of another size is refused. `sha256s`, when given, is checked as each listed file
    is written (hashed on the way through, never read back). `durable` fsyncs every file and
    directory so a later commit marker can be trusted. `reuse` maps a member's name to an
    existing file the caller vouches has that member's bytes (the model store: a shard the
    previous version holds, checked against its sha256): it is hard-linked in, its bytes in the
    archive skipped, not written again; where the link fails it is written as usual.
    Raises UnsafeArchive (a KilnError) naming the member and why; `dest` is left empty then.
    """
    archive, dest = Path(archive), Path(dest)
    limits = Limits.from_env() if limits is None else limits
    _prepare(dest)
    try:
        declared = None if sizes is None else sum(
            UNKNOWN_SIZE_CAP if s is None else s for s in sizes.values())
        budget = Budget.of(limits, archive.stat().st_size, declared=declared, caller=max_bytes)
        return _extract(archive, dest, budget, sizes, sha256s or {}, durable, reuse or {})
    except BaseException:
        _empty(dest)
        raise


def _extract(archive: Path, dest: Path, budget: Budget, sizes: Mapping[str, int | None] | None,
             sha256s: Mapping[str, str], durable: bool, reuse: Mapping[str, Path]) -> list[str]:
    tree = _Tree()
    current = "<archive>"
    try:
        with open(archive, "rb", buffering=0) as raw:
            reader = TarReader(GzipStream(raw).read)
            while (member := reader.next()) is not None:
                current = member.name
                _admit(archive, member, tree, sizes, budget)
                _make_parents(dest, member.name, tree)
                if member.isdir():
                    if member.name not in tree.made:
                        os.mkdir(dest / member.name, 0o755)
                    tree.dirs.add(member.name)
                    tree.made.add(member.name)
                    continue
                tree.files.add(member.name)
                tree.total += member.size
                if member.name in reuse and _link(reuse[member.name], dest / member.name):
                    current = "<end of archive>"
                    continue  # the reader skips the member's bytes on its way to the next one
                digest = _write(reader, member, dest, archive, durable)
                expected = sha256s.get(member.name)
                if expected is not None and digest != expected:
                    raise UnsafeArchive(archive, member.name, f"sha256 {digest} differs from "
                                        f"the manifest's {expected}")
                current = "<end of archive>"
    except BadTar as exc:
        raise UnsafeArchive(archive, exc.member if exc.member != "<archive>" else current,
                            exc.why) from None
    except GzipCorrupt as exc:
        raise UnsafeArchive(archive, current, f"corrupt or truncated archive ({exc})") from None
    except OSError as exc:
        raise UnsafeArchive(archive, current, f"cannot unpack it here ({exc.strerror or exc})",
                            "check the disk and the permissions of the target directory"
                            ) from None
    if sizes is not None:
        missing = sorted(set(sizes) - tree.files - {n for n, s in sizes.items() if s is None})
        if missing:
            raise UnsafeArchive(archive, missing[0], "listed file is missing from the archive")
    if durable:
        for d in sorted(tree.made | {"."}, reverse=True):
            fsync_dir(dest / d)
    return sorted(tree.files)


def _admit(archive: Path, member: Member, tree: _Tree, sizes: Mapping[str, int | None] | None,
           budget: Budget) -> None:
    """Raise UnsafeArchive unless `member` may be written (checked from its header alone)."""
    tree.members += 1
    if tree.members > budget.max_files:
        raise UnsafeArchive(archive, member.name, f"more than {budget.max_files} files and "
                            "directories (the host limit KILN_EXTRACT_MAX_FILES)",
                            "if the bundle is trusted, raise KILN_EXTRACT_MAX_FILES on this host")
    why = _refusal(member, tree, sizes)
    if why:
        raise UnsafeArchive(archive, member.name, why)
    room = budget.max_bytes - tree.total
    if member.size > room:
        fix = ("if the bundle is trusted, raise that limit on this host" if budget.host_bound
               else _FIX)
        raise UnsafeArchive(archive, member.name, f"its {member.size} bytes would take the "
                            f"unpacked total past the limit of {budget.max_bytes} bytes "
                            f"({budget.bytes_from}; a gzip bomb, or sizes that lie)", fix)


def _refusal(member: Member, tree: _Tree, sizes: Mapping[str, int | None] | None) -> str | None:
    """Why `member` must not be written, or None when it is safe."""
    name = member.name
    why = check_name(name)
    if why:
        return why
    if not (member.isfile() or member.isdir()):
        kind = _KINDS.get(member.type, "unsupported member type")
        return (f"{kind} (type {member.type!r}); only regular files and directories are "
                "allowed")
    if name in tree.files or name in tree.dirs:
        return "duplicate name"
    parts = name.split("/")
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in tree.files:
            return "a parent of this name is a regular file"
    if member.isdir():
        return None
    if name in tree.made:
        return "a directory of this name is already in the archive"
    if sizes is not None:
        if name not in sizes:
            return "file not listed in the manifest"
        expected = sizes[name]
        if expected is not None and member.size != expected:
            return f"size {member.size} differs from the declared {expected}"
        if expected is None and member.size > UNKNOWN_SIZE_CAP:
            return f"size {member.size} exceeds the {UNKNOWN_SIZE_CAP}-byte limit for this file"
    return None


def _make_parents(dest: Path, name: str, tree: _Tree) -> None:
    """Create the missing parent directories of `name`, shallowest first (never recursive)."""
    parts = name.split("/")
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        if parent not in tree.made:
            os.mkdir(dest / parent, 0o755)
            tree.made.add(parent)


def _link(source: Path, target: Path) -> bool:
    """Hard-link a file the caller vouches for into place; False where links do not work here."""
    try:
        os.link(source, target)
    except OSError:
        return False
    return True


def _write(reader: TarReader, member: Member, dest: Path, archive: Path, durable: bool) -> str:
    """Copy one member's bytes into a new file (exactly `member.size` or a refusal); its sha256."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(dest / member.name, flags, 0o644)
    with os.fdopen(fd, "wb") as raw:
        out = HashingWriter(raw)
        left = member.size
        while left:
            chunk = reader.read(min(CHUNK, left))
            if not chunk:
                raise UnsafeArchive(archive, member.name,
                                    f"truncated: {left} of {member.size} bytes missing")
            out.write(chunk)
            left -= len(chunk)
        if durable:
            raw.flush()
            os.fsync(raw.fileno())
    return out.hexdigest()
