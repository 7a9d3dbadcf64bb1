"""Inflate a gzip file as one stream, a bounded piece at a time.

`artifacts.tarball` writes several gzip members back to back (RFC 1952 allows it); some tools pad
a .gz file with zero bytes after its last member, which gzip(1), GNU tar and Python's `gzip` all
skip. This reader does the same and nothing more: any other byte after a member must start a new
member, or the file is refused as corrupt. zlib checks each member's CRC32 and length.

Why not `gzip.GzipFile`: it reads 8 KiB at a time (more Python than inflating), and a caller
cannot ask it for "at most n bytes of output" without it inflating more internally; here every
`read(n)` inflates at most `n` bytes, so a gzip bomb costs only what the caller agreed to read.
"""
from __future__ import annotations

import zlib
from typing import BinaryIO

CHUNK = 256 << 10  # 256 KiB of compressed input per read of the file


class GzipCorrupt(Exception):
    """The compressed stream is damaged, truncated or not gzip at all."""


class GzipStream:
    """The decompressed bytes of a (multi-member) gzip file, read through `read(n)`."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b""  # compressed bytes not yet fed to zlib
        self._eof = False

    def read(self, n: int) -> bytes:
        """Up to `n` (> 0) decompressed bytes; b"" only at the clean end of the last member."""
        try:
            data = self._inflate(n)
        except zlib.error as exc:
            raise GzipCorrupt(f"not a valid gzip stream ({exc})") from None
        return data

    def _inflate(self, want: int) -> bytes:
        while not self._eof:
            if self._z.eof and not self._next_member():
                break
            tail = self._z.unconsumed_tail
            if not tail and not self._pending:
                self._pending = self.raw.read(CHUNK)
                if not self._pending:
                    raise GzipCorrupt("the compressed stream ends inside a gzip member "
                                      "(truncated download or file)")
            data = self._z.decompress(tail or self._pending, want)
            if not tail:
                self._pending = b""
            if data:
                return data
        return b""

    def _next_member(self) -> bool:
        """After a member's end: start the next one; False at the end of the file.

        Zero bytes between or after members are padding and are skipped (see module doc)."""
        rest = self._z.unused_data + self._pending
        while True:
            rest = rest.lstrip(b"\0")
            if rest:
                break
            rest = self.raw.read(CHUNK)
            if not rest:
                self._eof = True
                return False
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = rest
        return True
