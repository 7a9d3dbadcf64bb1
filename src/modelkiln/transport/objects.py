"""A directory of named objects, on S3 or on disk, with the few operations publishing needs.

Publishing a bundle, the remote cache and the OCI push all move the same kinds of things: a small
object written only if absent (a claim, a manifest, an action record), a large content-addressed
file (a tarball, a blob), a HEAD to learn what is there, and a read that is checked before it is
trusted. `Location` names those operations once; `transport.bucket.Bucket` (an s3:// prefix) and
`transport.local.LocalDir` (a directory) implement them with the same meaning, so a protocol
written against `Location` holds on both.

Conditional writes are the concurrency primitive. `IF_ABSENT` is atomic on both (S3's
`If-None-Match: *`, `os.link` on disk): of any number of writers, exactly one creates the object
and the others get `PreconditionFailed`. `if_match(etag)` replaces exactly the object that was
looked at; S3 checks it atomically, a directory only checks just before `os.replace` (no file
system call compares and renames in one step), so a protocol must not rely on it for exclusion.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import PublishError
from .fetch import Progress


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD tells: size, an opaque version tag, and the sha256 recorded at write time.

    `etag` changes whenever the object is replaced (S3's ETag; on disk device, inode, size and
    mtime). `sha256` is what the writer recorded beside the object (S3 metadata
    `x-amz-meta-sha256`); None where nothing is recorded (a directory): use `Location.holds`.
    """

    size: int
    etag: str
    sha256: str | None = None


@dataclass(frozen=True)
class Condition:
    """When a write may happen: always, only if the key is absent, or only over one version."""

    if_absent: bool = False
    if_match: str | None = None

    def __str__(self) -> str:
        if self.if_absent:
            return "if absent"
        return f"if ETag {self.if_match}" if self.if_match else "always"


ALWAYS = Condition()
IF_ABSENT = Condition(if_absent=True)


def if_match(etag: str) -> Condition:
    """Replace only the object whose `ObjectInfo.etag` is `etag`."""
    return Condition(if_match=etag)


class PreconditionFailed(PublishError):
    """A conditional write found the key present (IF_ABSENT) or changed (if_match).

    An expected outcome under concurrency: callers catch it and decide from what is there now.
    """

    def __init__(self, uri: str, condition: Condition):
        self.uri, self.condition = uri, condition
        super().__init__(f"{uri}: another writer changed it at the same time (write {condition} "
                         "refused); run the command again")


class Location(Protocol):
    """A directory of objects addressed by relative keys ("a/b.json"): an s3:// prefix or a path.

    Every method raises PublishError (a KilnError) for transport and permission failures, with
    the URI and the fix in its message, never a library's exception. A failure of one object
    rather than of the medium is a `BadObject` (transport.fetch): `Missing`, `DigestMismatch`,
    `Unusable` / `TooLarge`; the action cache reads any of those as a miss ("mismatch = miss"),
    every other error as the cache being unreachable. Reads are strict: only what a writer of
    this Location could have stored (on disk: a regular file reached without a symlink below the
    root), never more bytes than the reader's bound.
    """

    @property
    def base_uri(self) -> str:
        """The location itself, ending with '/'."""
        ...

    def uri(self, key: str) -> str:
        """The full URI of `key` (what messages and results name)."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """What is stored under `key`, or None when nothing is (Unusable: not an object)."""
        ...

    def holds(self, key: str, size: int, sha256: str) -> bool:
        """Does `key` hold exactly these bytes? (S3: size and recorded sha256; disk: re-hashed)"""
        ...

    def get_small(self, key: str, limit: int = ...) -> bytes | None:
        """The bytes of a small object (a manifest, a record), or None when it does not exist;
        TooLarge when it is over `limit` bytes (refused, never cut), Unusable when it is not an
        object (a FIFO, a device, a symlink)."""
        ...

    def fetch(self, key: str, dest: Path, *, size: int, sha256: str,
              progress: Progress | None = None) -> None:
        """Copy `key` into the new file `dest`, refusing bytes other than `size` / `sha256`
        (DigestMismatch, reading at most `size` + 1 bytes; `dest` is removed) and an absent key
        (Missing)."""
        ...

    def put_bytes(self, key: str, data: bytes, condition: Condition = ALWAYS, *,
                  content_type: str = "application/json") -> ObjectInfo:
        """Write a small object whole; PreconditionFailed when `condition` does not hold
        (IF_ABSENT: of concurrent writers exactly one succeeds, so the first writer wins)."""
        ...

    def upload_file(self, key: str, path: Path, *, size: int, sha256: str,
                    condition: Condition = ALWAYS, progress: Progress | None = None,
                    content_type: str = "application/octet-stream") -> ObjectInfo:
        """Write a (large) file whose size and sha256 the caller checked; recorded with it."""
        ...

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key under `prefix` (a "directory" ending in '/', or "" for all), sorted; the
        temporary files of writers in progress are left out."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key`; nothing happens when it is absent."""
        ...

    def clean_stale(self) -> None:
        """Remove what killed writers left behind (temporary files), where the medium has any."""
        ...


def ensure(place: object) -> None:
    """Create `place` where that means something and can be done (a directory: `LocalDir.ensure`),
    so a first run that only reads finds an empty location instead of an error. An optional
    method of a Location: one without it (a bucket exists or it does not) is left as it is."""
    make = getattr(place, "ensure", None)
    if callable(make):
        make()
