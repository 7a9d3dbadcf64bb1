"""Deterministic, fast `bundle.tar.gz`.

Byte-identical output for identical inputs: members sorted, mtime 0, uid/gid 0, no user names, fixed
modes, a fixed gzip header (no name, mtime 0, OS 255). Weights barely compress, so each file picks
its own deflate level from a 1 MiB sample spread over it (stored when deflate would save under
10 %, as for fp32 weights; 6 for text), and the stream is written as consecutive gzip members,
one per run of equal level (a stored member is valid gzip). RFC 1952 allows several members in one file; `tar xzf`, `gzip -d` and Python's `tarfile` read them as one stream.
Memory stays at one 1 MiB buffer whatever the file sizes.
"""
from __future__ import annotations

import os
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from .digest import HashingWriter

CHUNK = 1 << 20
BLOCK = 512
RECORD = 20 * BLOCK
# A fixed gzip member header: no file name, mtime 0, OS 255 (unknown), so output is reproducible.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_WINDOWS, _WINDOW = 64, 16 * 1024  # the level's sample: 64 windows of 16 KiB, 1 MiB
STORE_ABOVE = 0.9  # compressed/raw ratio of the sample above which a file is stored
T = TypeVar("T")


class _Sink(Protocol):
    """Where the gzip bytes go: the file itself, or a HashingWriter in front of it."""

    def write(self, data: bytes, /) -> object: ...


class _GzipMembers:
    """Writes a gzip file as a sequence of members, switching deflate level between members."""

    def __init__(self, out: _Sink):
        self.out = out
        self.level: int | None = None
        self._comp: zlib._Compress | None = None
        self._crc = 0
        self._size = 0

    def use_level(self, level: int) -> None:
        if level == self.level:
            return
        self.finish()
        self.level = level
        self.out.write(GZIP_HEADER)
        self._comp = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
        self._crc, self._size = 0, 0

    def write(self, data: bytes | memoryview) -> None:
        if self._comp is None:
            raise ValueError("use_level() starts a gzip member before any write")
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        self.out.write(self._comp.compress(data))

    def finish(self) -> None:
        if self._comp is None:
            return
        self.out.write(self._comp.flush())
        self.out.write(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))
        self._comp, self.level = None, None


def _sample(path: Path, size: int) -> bytes:
    """Up to 1 MiB of the file: all of it when it is that small, else `_WINDOWS` windows spread
    evenly from its first byte to its last. A function of the bytes and the size only, so the
    same input always gives the same sample (and the same level)."""
    with open(path, "rb") as f:
        if size <= _WINDOWS * _WINDOW:
            return f.read(size)
        step = (size - _WINDOW) // (_WINDOWS - 1)
        parts = []
        for i in range(_WINDOWS):
            f.seek(i * step)
            parts.append(f.read(_WINDOW))
        return b"".join(parts)


def choose_level(path: Path, size: int) -> int:
    """Deflate level for one file, from how well a sample of it compresses (deterministic).

    0 (stored) when level 1 would save under 10 % of the sample: real fp32 weights save about
    7 % for ~45 ms of CPU per MiB, so they are stored. The sample is spread over the whole file,
    not its head: a safetensors file starts with its JSON header and often small all-zero or
    all-one tensors (biases, LayerNorm), which made a head probe pick deflate for hundreds of MB
    of incompressible floats."""
    if size < 64 * 1024:
        return 6
    sample = _sample(path, size)
    ratio = len(zlib.compress(sample, 1)) / max(1, len(sample))
    if ratio > STORE_ABOVE:
        return 0
    return 1 if ratio > 0.5 else 6


def tar_header(name: str, size: int, *, is_dir: bool, mode: int | None = None,
               errors: str = "surrogateescape") -> bytes:
    """A deterministic pax header: mtime 0, uid/gid 0, no user names, mode 0755 for a directory
    and 0644 for a file unless `mode` says otherwise. `errors="strict"` refuses a name that is
    not valid UTF-8 instead of carrying its bytes through."""
    info = tarfile.TarInfo(name + ("/" if is_dir else ""))
    info.size = 0 if is_dir else size
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = mode if mode is not None else (0o755 if is_dir else 0o644)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", errors)


def with_parents(members: Iterable[tuple[str, T]]) -> list[tuple[str, T | None]]:
    """Sorted (name, member) pairs plus each parent directory (member None) once."""
    entries: dict[str, T | None] = {}
    for rel, member in members:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), None)
        entries[rel] = member
    return sorted(entries.items())


def copy_bytes(path: Path, size: int, buf: bytearray, write: Callable[[memoryview], object],
               progress: Callable[[int], None] | None = None) -> None:
    """Feed `size` bytes of the file `path` to `write` through `buf`; OSError if it shrank."""
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        left = size
        while left:
            n = f.readinto(buf)
            if not n:
                raise OSError(f"{path}: file shrank while it was being archived")
            n = min(n, left)
            write(view[:n])
            left -= n
            if progress:
                progress(n)


def write_tarball(out: Path, members: Sequence[tuple[str, Path]],
                  progress: Callable[[int], None] | None = None) -> tuple[int, str]:
    """Write (archive name, source file) pairs into the gzip tarball `out`, sorted by name.

    Sources may live in different directories (each stage's output), so packaging never copies a
    weight file into a staging tree first. Returns the tarball's size and sha256, computed from
    the bytes as they are written.
    """
    buf = bytearray(CHUNK)
    with open(out, "wb", buffering=CHUNK) as raw:
        hashing = HashingWriter(raw)
        gz = _GzipMembers(hashing)
        total = 0
        for name, path in with_parents(members):
            is_dir = path is None
            size = 0 if path is None else os.stat(path).st_size
            gz.use_level(6 if path is None else choose_level(path, size))
            gz.write(tar_header(name, size, is_dir=is_dir))
            total += BLOCK
            if path is None:
                continue
            copy_bytes(path, size, buf, gz.write, progress)
            pad = -size % BLOCK
            if pad:
                gz.write(bytes(pad))
            total += size + pad
        gz.use_level(6)
        end = 2 * BLOCK
        end += -(total + end) % RECORD
        gz.write(bytes(end))
        gz.finish()
        raw.flush()
        os.fsync(raw.fileno())
    return hashing.size, hashing.hexdigest()
