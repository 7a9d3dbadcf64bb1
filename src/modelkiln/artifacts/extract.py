"""Unpack a bundle tarball without trusting it.

`tarfile.extractall` will follow a member's name or link wherever it points. A bundle arrives from
the network, so `safe_extract` accepts only what a modelkiln bundle contains (regular files and
directories with plain relative UTF-8 names) and refuses everything else before writing a byte of
it: absolute names, `..`, symlinks, hardlinks, devices, fifos, sparse members, duplicate names, a
file where a directory is needed, and archives that inflate past a byte budget (a gzip bomb, or a
header that lies about sizes). It streams the archive once (no seeking), writes with O_EXCL and
O_NOFOLLOW into a fresh directory, and on any refusal empties that directory again, so a caller
never sees a half-extracted tree.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO, Mapping, Self

from .atomic import fsync_dir
from .digest import HashingWriter
from ..errors import KilnError

# 256 KiB pieces: 1 MiB ones are 4x slower here, each a fresh mmap whose pages fault in one by one.
CHUNK = 256 << 10
# Without a budget from the caller: this ratio of the compressed size, never below the floor.
# Deflate tops out near 1032:1; real bundles (weights stored, JSON at ~5:1) sit far below 100:1.
DEFAULT_RATIO = 100
DEFAULT_FLOOR = 256 << 20
UNKNOWN_SIZE_CAP = 64 << 20  # a member allowed with size None (the bundle's manifest.json)
_HEADER_ALLOWANCE = 4096  # tar header + pax record + padding per member, generously
_MAX_NAME = 4096
_MAX_COMPONENT = 255
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
MAX_MEMBERS = 100_000  # tarfile keeps every header in memory; a bundle has tens of files


class UnsafeArchive(KilnError):
    """An archive member (or the archive itself) that safe_extract will not write."""

    def __init__(self, archive: Path | str, member: str, why: str):
        self.archive, self.member, self.why = str(archive), member, why
        super().__init__(f"{archive}: member {member!r}: {why}; refusing to unpack it "
                         f"(fetch the bundle again from a trusted publisher, or rebuild it)")


class _Inflate:
    """A read-only stream of the decompressed tar that refuses to inflate past its allowance.

    Multi-member gzip (what `artifacts.tarball` writes) is inflated with zlib directly, 256 KiB
    at a time: `gzip.GzipFile` reads 8 KiB at a time, which costs more Python than inflating.
    zlib checks each member's CRC32 and length. The allowance grows with every member header
    seen, so headers, pax records and padding are paid for, but a pax record or a run of bytes
    that claims gigabytes is cut off early.
    """

    def __init__(self, raw: BinaryIO, content_cap: int):
        self.raw = raw
        self.content_cap = content_cap
        self.members = 0
        self.read_total = 0
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b""  # compressed bytes not yet fed to zlib
        self._eof = False

    def allowance(self) -> int:
        return self.content_cap + _HEADER_ALLOWANCE * (self.members + 1) + CHUNK

    def read(self, n: int = -1) -> bytes:
        left = self.allowance() - self.read_total
        if left <= 0:
            raise _Overflow()
        want = left + 1 if n is None or n < 0 else min(n, left + 1)
        data = self._inflate(want)
        self.read_total += len(data)
        if self.read_total > self.allowance():
            raise _Overflow()
        return data

    def _inflate(self, want: int) -> bytes:
        while not self._eof:
            if self._z.eof:  # a member ended: another may follow (or only the end of file)
                rest = self._z.unused_data
                self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._pending = rest + self._pending or self.raw.read(CHUNK)
                if not self._pending:
                    self._eof = True
                    break
            tail = self._z.unconsumed_tail
            if not tail and not self._pending:
                self._pending = self.raw.read(CHUNK)
                if not self._pending:
                    raise EOFError("compressed stream ends inside a gzip member")
            data = self._z.decompress(tail or self._pending, want)
            if not tail:
                self._pending = b""
            if data:
                return data
        return b""


class _Overflow(Exception):
    """Raised inside the stream; turned into UnsafeArchive naming the member being read."""


class _BadHeader(Exception):
    """A garbled header in mid-archive; plain tarfile would silently treat it as the end."""


class _StrictInfo(tarfile.TarInfo):
    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.HeaderError as exc:
            # A zero block (EOF) or no bytes at all (Empty) is a normal end; anything else is not.
            if type(exc).__name__ in ("EOFHeaderError", "EmptyHeaderError"):
                raise
            raise _BadHeader(str(exc)) from None


def check_name(name: str) -> str | None:
    """Why `name` is not a safe relative member name, or None when it is."""
    if not name:
        return "empty name"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if len(encoded) > _MAX_NAME:
        return "name too long"
    if name.startswith("/"):
        return "absolute path"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name) or "\\" in name:
        return "control character or backslash in name"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return f"path component {part!r} (only plain relative names are allowed)"
        if len(part.encode("utf-8")) > _MAX_COMPONENT:
            return "path component too long"
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
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise KilnError(f"{dest}: extraction target is not empty; pass a fresh, empty directory")


def _content_cap(archive: Path, sizes: Mapping[str, int | None] | None,
                 max_bytes: int | None) -> int:
    if max_bytes is not None:
        return max_bytes
    if sizes is not None:
        return sum(UNKNOWN_SIZE_CAP if s is None else s for s in sizes.values())
    return max(DEFAULT_FLOOR, DEFAULT_RATIO * archive.stat().st_size)


def safe_extract(archive: Path, dest: Path, max_bytes: int | None = None, *,
                 sizes: Mapping[str, int | None] | None = None,
                 sha256s: Mapping[str, str] | None = None, durable: bool = True) -> list[str]:
    """Unpack the gzip tarball `archive` into the empty directory `dest`; return its files, sorted.

    `max_bytes` caps the total size of the files (default: the sum of `sizes`, else 100x the
    archive's size, at least 256 MiB). `sizes`, when given, lists every file the archive may hold
    with its exact size (None: any size up to 64 MiB); anything unlisted or of another size is
    refused. `sha256s`, when given, is checked as each listed file is written (hashed on the way
    through, never read back). `durable` fsyncs every file and directory so a later commit marker
    can be trusted.
    Raises UnsafeArchive (a KilnError) naming the member and why; `dest` is left empty then.
    """
    archive, dest = Path(archive), Path(dest)
    _prepare(dest)
    cap = _content_cap(archive, sizes, max_bytes)
    try:
        return _extract(archive, dest, cap, sizes, sha256s or {}, durable)
    except BaseException:
        _empty(dest)
        raise


def _extract(archive: Path, dest: Path, cap: int, sizes: Mapping[str, int | None] | None,
             sha256s: Mapping[str, str], durable: bool) -> list[str]:
    files: set[str] = set()
    dirs: set[str] = set()
    total = 0
    current = "<archive>"
    with open(archive, "rb", buffering=0) as raw:
        budget = _Inflate(raw, cap)
        try:
            with tarfile.open(fileobj=budget, mode="r|",  # type: ignore[call-overload]
                              encoding="utf-8", errors="surrogateescape", tarinfo=_StrictInfo,
                              bufsize=CHUNK) as tar:
                for member in tar:
                    budget.members += 1
                    current = member.name
                    if budget.members > MAX_MEMBERS:
                        raise UnsafeArchive(archive, member.name,
                                            f"more than {MAX_MEMBERS} members")
                    why = _refusal(member, files, dirs, sizes, cap - total)
                    if why:
                        raise UnsafeArchive(archive, member.name, why)
                    if member.isdir():
                        dirs.add(member.name)
                        (dest / member.name).mkdir(parents=True, exist_ok=True)
                        continue
                    files.add(member.name)
                    total += member.size
                    digest = _write(tar, member, dest, archive, durable)
                    expected = sha256s.get(member.name)
                    if expected is not None and digest != expected:
                        raise UnsafeArchive(archive, member.name, f"sha256 {digest} differs from "
                                            f"the manifest's {expected}")
                current = "<end of archive>"
            while budget.read(CHUNK):  # reach the gzip trailer so its CRC and length are checked
                pass
        except _Overflow:
            raise UnsafeArchive(archive, current, f"archive inflates past its budget of {cap} "
                                "bytes (gzip bomb or sizes that lie)") from None
        except (tarfile.TarError, _BadHeader, EOFError, zlib.error) as exc:
            raise UnsafeArchive(archive, current, f"corrupt or truncated archive ({exc})") from None
    if sizes is not None:
        missing = sorted(set(sizes) - files - {n for n, s in sizes.items() if s is None})
        if missing:
            raise UnsafeArchive(archive, missing[0], "listed file is missing from the archive")
    if durable:
        for d in sorted({str(Path(f).parent) for f in files} | dirs | {"."}, reverse=True):
            fsync_dir(dest / d)
    return sorted(files)


def _refusal(member: tarfile.TarInfo, files: set[str], dirs: set[str],
             sizes: Mapping[str, int | None] | None, room: int) -> str | None:
    """Why `member` must not be written, or None when it is safe."""
    name = member.name
    why = check_name(name)
    if why:
        return why
    if member.type not in (*_FILE_TYPES, tarfile.DIRTYPE):
        kinds = {tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
                 tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
                 tarfile.FIFOTYPE: "fifo", tarfile.GNUTYPE_SPARSE: "sparse file",
                 tarfile.CONTTYPE: "contiguous file"}
        return f"{kinds.get(member.type, 'unsupported member type')} (type {member.type!r}); " \
               "only regular files and directories are allowed"
    if name in files or name in dirs:
        return "duplicate name"
    parts = name.split("/")
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in files:
            return "a parent of this name is a regular file"
    if member.isdir():
        return None
    if member.size < 0:
        return "negative size"
    if sizes is not None:
        if name not in sizes:
            return "file not listed in the manifest"
        expected = sizes[name]
        if expected is not None and member.size != expected:
            return f"size {member.size} differs from the declared {expected}"
        if expected is None and member.size > UNKNOWN_SIZE_CAP:
            return f"size {member.size} exceeds the {UNKNOWN_SIZE_CAP}-byte limit for this file"
    if member.size > room:
        return f"size {member.size} exceeds the remaining budget of {max(room, 0)} bytes"
    return None


def _write(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, archive: Path,
           durable: bool) -> str:
    """Copy one member's bytes into a new file (exactly `member.size` or a refusal); its sha256."""
    target = dest / member.name
    target.parent.mkdir(parents=True, exist_ok=True)
    src = tar.extractfile(member)
    if src is None:  # cannot happen for regular files; be explicit rather than write nothing
        raise UnsafeArchive(archive, member.name, "no data for a regular file")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(target, flags, 0o644)
    with os.fdopen(fd, "wb") as raw:
        out = HashingWriter(raw)
        left = member.size
        while left:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                raise UnsafeArchive(archive, member.name,
                                    f"truncated: {left} of {member.size} bytes missing")
            out.write(chunk)
            left -= len(chunk)
        if durable:
            raw.flush()
            os.fsync(raw.fileno())
    return out.hexdigest()
