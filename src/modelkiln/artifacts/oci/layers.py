"""Deterministic image layers: the same entries always give the same bytes, hence the same digest.

A layer is a tar stream of (path, content, mode) entries written in sorted order with every parent
directory once, mtime 0, uid/gid 0, no user or group names and fixed modes (0755 directories,
0644 files unless an entry asks for 0755). Compressed layers use one gzip member with a fixed
header (no name, mtime 0, OS 255) and deflate level 6; big incompressible files (weights) go in
uncompressed layers, so a push or pull of a large model is a straight copy, and the layer's digest
is its diff_id. Both digests are computed from the bytes as they are written: nothing is re-read.
"""
from __future__ import annotations

import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..tarball import BLOCK, CHUNK, GZIP_HEADER, copy_bytes, tar_header, with_parents
from . import media


@dataclass(frozen=True)
class Entry:
    """One file of a layer: its path inside the image (no leading '/'), where its bytes come
    from (a file or bytes in memory) and its mode."""

    path: str
    source: Path | bytes
    mode: int = 0o644

    def size(self) -> int:
        return len(self.source) if isinstance(self.source, bytes) else self.source.stat().st_size


@dataclass(frozen=True)
class Layer:
    """A written layer blob: digest and size of the blob, diff_id of the uncompressed tar."""

    digest: str
    diff_id: str
    size: int
    media_type: str

    def descriptor(self, annotations: dict[str, str] | None = None) -> media.Descriptor:
        return media.Descriptor(self.media_type, self.digest, self.size,
                                tuple(sorted((annotations or {}).items())))


def _entries(entries: list[Entry]) -> list[tuple[str, Entry | None]]:
    """Sorted (path, entry) pairs plus each parent directory (entry None) once."""
    for e in entries:
        if e.path.startswith("/") or ".." in e.path.split("/") or not e.path:
            raise ValueError(f"layer entry {e.path!r}: need a relative path without '..'")
    return with_parents((e.path, e) for e in entries)


class _Sink:
    """Where the tar bytes go: the diff_id hash, optionally gzip, then the blob hash and file."""

    def __init__(self, out: BinaryIO, gzip: bool):
        self.out, self.gzip = out, gzip
        self.tar_hash, self.blob_hash = hashlib.sha256(), hashlib.sha256()
        self.size = 0
        self._crc, self._raw = 0, 0
        self._comp = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS, 9) if gzip else None
        if gzip:
            self._emit(GZIP_HEADER)

    def _emit(self, data: bytes | memoryview) -> None:
        if data:
            self.blob_hash.update(data)
            self.size += len(data)
            self.out.write(data)

    def write(self, data: bytes | memoryview) -> None:
        self.tar_hash.update(data)
        if self._comp is None:
            self._emit(data)
            return
        self._crc = zlib.crc32(data, self._crc)
        self._raw += len(data)
        self._emit(self._comp.compress(data))

    def close(self) -> tuple[str, str]:
        if self._comp is not None:
            self._emit(self._comp.flush())
            self._emit(struct.pack("<II", self._crc & 0xFFFFFFFF, self._raw & 0xFFFFFFFF))
        diff_id = "sha256:" + self.tar_hash.hexdigest()
        digest = diff_id if self._comp is None else "sha256:" + self.blob_hash.hexdigest()
        return digest, diff_id


def write_layer(out: Path, entries: list[Entry], *, gzip: bool) -> Layer:
    """Write the layer holding `entries` to the file `out`; see the module doc."""
    buf = bytearray(CHUNK)
    with open(out, "wb") as raw:
        sink = _Sink(raw, gzip)
        total = 0
        for name, entry in _entries(entries):
            if entry is None:
                sink.write(tar_header(name, 0, is_dir=True, errors="strict"))
                total += BLOCK
                continue
            size = entry.size()
            sink.write(tar_header(name, size, is_dir=False, mode=entry.mode, errors="strict"))
            if isinstance(entry.source, bytes):
                sink.write(entry.source)
            else:
                copy_bytes(entry.source, size, buf, sink.write)
            pad = -size % BLOCK
            if pad:
                sink.write(bytes(pad))
            total += BLOCK + size + pad
        sink.write(bytes(2 * BLOCK))  # end of archive; no record padding (OCI layers need none)
        digest, diff_id = sink.close()
        raw.flush()
        os.fsync(raw.fileno())
    return Layer(digest, diff_id, sink.size, media.LAYER_GZIP if gzip else media.LAYER_TAR)
