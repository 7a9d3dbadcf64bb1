"""What every place an action cache can live offers, and how a read of one entry fails.

`Mismatch` (bytes other than the record promised) and `Unusable` (an entry that cannot be what
the cache wrote: not a regular file, reached through a symlink, over the reader's bound) are
misses of one entry; any other exception from a `Storage` is a failure of the cache itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

CHUNK = 1 << 20


class Mismatch(Exception):
    """Fetched bytes differ from the size or sha256 the record names."""


class Unusable(Mismatch):
    """An entry that is there but cannot be what the cache wrote: not a regular file, reached
    through a symlink, or larger than the reader's bound. A miss like a mismatch, never a reason
    to stop using the cache."""


class Storage(Protocol):
    uri: str

    def size(self, key: str) -> int | None: ...
    def read(self, key: str, limit: int) -> bytes | None: ...
    def fetch(self, key: str, dest: Path, size: int, sha256: str) -> None: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def put_if_absent(self, key: str, data: bytes) -> bool: ...
    def put(self, key: str, data: bytes) -> None: ...
    def list_keys(self, prefix: str) -> list[str]: ...


def check(got: int, digest: str, size: int, sha256: str, what: str) -> None:
    if got != size or digest != sha256:
        raise Mismatch(f"{what}: {got} bytes with sha256 {digest[:12]}, the record says {size} "
                       f"bytes with {sha256[:12]}")
