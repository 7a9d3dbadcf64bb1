"""The action cache: look a key up, restore its outputs verified, save a task's outputs.

Layout under the cache root:

    ac/<key>.json               action records (written last, first writer wins)
    blobs/sha256/<hex>          output bytes, content-addressed (written first, skipped if present)
    index/<bundle>/<commit>.json  a built bundle's summary (manifests, thresholds), for review

The cache has no storage code of its own: it lives in a `transport.Location` (file://, s3:// or
an installed plug-in's scheme, one registry in transport.schemes), whose operations carry what
it relies on: strict bounded reads, checked fetches (a `BadObject` is a miss), conditional
writes (a record is put if absent, so the first writer wins) and the light no-boto3 reads.

Every failure here is a miss or a skipped write with a warning, never a failed build and never a
wrong output: a cache is an optimisation. A bad entry (a malformed or mis-bound record, a corrupt
blob, a FIFO or symlink where a file should be) is a miss for that one task. After the first I/O
error of the cache itself (no credentials, endpoint down) the cache stops trying for the rest of
the process, so a broken cache costs one warning.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..transport import (
    IF_ABSENT,
    BadObject,
    Location,
    PreconditionFailed,
    Unusable,
    ensure,
    open_location,
)
from .config import CacheConfig
from .records import ActionRecord, BadRecord, BlobRef, Expected, shown

RECORD_LIMIT = 16 << 20
Log = Callable[[str], None]


def record_key(key: str) -> str:
    return f"ac/{key}.json"


def blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256}"


@dataclass(frozen=True)
class Restored:
    """What a restore moved into place: files by relative path -> sha256, and bytes fetched."""

    digests: dict[str, str]
    bytes: int


class ActionCache:
    def __init__(self, place: Location, write: bool, log: Log):
        self.place, self.write, self.log = place, write, log
        self.broken = False
        self.bad_blobs: set[str] = set()  # blobs seen corrupt this process: a writer replaces them

    @property
    def uri(self) -> str:
        return self.place.base_uri.rstrip("/")

    def _io_failed(self, what: str, exc: BaseException) -> None:
        if not self.broken:
            self.log(f"kiln: warning: cache {self.uri}: {what} failed ({exc}); building "
                     "without the cache for the rest of this run")
        self.broken = True

    def lookup(self, key: str, expected: Expected | None = None) -> ActionRecord | None:
        """The record for `key`, checked against what the task it is for `expected` (when
        given), or None: absent, unreadable, malformed or bound to something else, all misses."""
        if self.broken:
            return None
        try:
            data = self.place.get_small(record_key(key), RECORD_LIMIT)
            if data is None:
                return None
            record = ActionRecord.from_bytes(data, key)
            if expected is not None:
                record.check(expected)
            return record
        except (BadRecord, BadObject) as exc:  # this record: a miss, the cache stays in use
            self.log(f"kiln: warning: cache record {key[:12]} is unusable ({exc}); "
                     "treating it as a miss")
            return None
        except Exception as exc:  # the cache itself failed
            self._io_failed("reading a record", exc)
            return None

    def lookup_many(self, wanted: Mapping[str, Expected | None],
                    workers: int = 16) -> dict[str, ActionRecord]:
        """Records for many keys at once (plan on a cold runner), each checked against what
        its task expects: reads in parallel."""
        todo = sorted(wanted)
        if not todo:
            return {}
        with ThreadPoolExecutor(min(workers, len(todo)), thread_name_prefix="kiln-ac") as pool:
            found = dict(zip(todo, pool.map(lambda k: self.lookup(k, wanted[k]), todo),
                             strict=True))
        return {k: r for k, r in found.items() if r is not None}

    def restore(self, record: ActionRecord, dest: Path) -> Restored | None:
        """Fetch every output of `record` into the empty directory `dest`, each checked against
        its size and sha256. None (with a warning naming the blob) on any mismatch or error; the
        caller discards `dest` and runs the stage."""
        fetched = 0
        for blob in record.outputs:
            target = dest / blob.path
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # the record's layout does not fit this directory: a miss
                self.log(f"kiln: warning: {record.task}: cannot restore {shown(blob.path)} "
                         f"({exc.strerror}); running the stage instead")
                return None
            why = self.fetch_blob(blob, target)
            if why is not None:
                if not self.broken:  # a broken cache has said so once already
                    self.log(f"kiln: warning: {record.task}: cache blob for {shown(blob.path)} "
                             f"is {why}; running the stage instead")
                return None
            fetched += blob.size
        return Restored(record.digests(), fetched)

    def fetch_blob(self, blob: BlobRef, target: Path) -> str | None:
        """Fetch `blob` into `target`, checked against its size and sha256; None when it
        arrived, else why not: a missing, corrupt or unusable blob (remembered, so a writer
        replaces it) or a failure of the cache itself (which stops using it)."""
        try:
            self.place.fetch(blob_key(blob.sha256), target, size=blob.size, sha256=blob.sha256)
        except BadObject as exc:
            self.bad_blobs.add(blob.sha256)
            return f"corrupt or missing ({exc})"
        except Exception as exc:  # a transport failure is a miss
            self._io_failed(f"fetching {blob.path}", exc)
            return f"not fetched ({exc})"
        return None

    def save(self, record: ActionRecord, directory: Path) -> bool:
        """Blobs first (skipping any already present at the right size), then the record,
        conditionally. True when this call's record is the one stored; False when another writer
        got there first or the write failed (warned)."""
        if not self.write or self.broken:
            return False
        try:
            for blob in record.outputs:
                self._put_blob(blob, directory / blob.path)
            return self.put_if_absent(record_key(record.key), record.to_bytes())
        except Exception as exc:  # a failed cache write never fails the build
            self._io_failed("writing", exc)
            return False

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write `key` unless it is there: True when this call wrote it, False when another
        writer's is (it wins). Transport failures raise."""
        try:
            self.place.put_bytes(key, data, IF_ABSENT)
        except PreconditionFailed:
            return False
        return True

    def _put_blob(self, blob: BlobRef, path: Path) -> None:
        """Upload unless a blob of the right size is there (one that is not a regular file, or
        was found corrupt this run, is replaced: content-addressed, so any writer's bytes do)."""
        key = blob_key(blob.sha256)
        if blob.sha256 not in self.bad_blobs:
            with contextlib.suppress(Unusable):
                info = self.place.head(key)
                if info is not None and info.size == blob.size:
                    return
        self.place.upload_file(key, path, size=blob.size, sha256=blob.sha256)

    def read_blob(self, blob: BlobRef) -> bytes | None:
        """A small output's bytes straight from its blob, checked; None when absent or wrong."""
        from ..artifacts.digest import sha256_bytes

        data = self.read_small(blob_key(blob.sha256), blob.size)
        if data is None or len(data) != blob.size or sha256_bytes(data) != blob.sha256:
            return None
        return data

    def put_summary(self, key: str, data: bytes) -> None:
        """A mutable side entry (the review index); written only by trusted writers."""
        if not self.write or self.broken:
            return
        try:
            self.place.put_bytes(key, data)
        except Exception as exc:
            self._io_failed("writing the review index", exc)

    def read_small(self, key: str, limit: int = RECORD_LIMIT) -> bytes | None:
        """A small entry's bytes; None when absent or unusable (a warning: it is a miss)."""
        if self.broken:
            return None
        try:
            return self.place.get_small(key, limit)
        except BadObject as exc:
            self.log(f"kiln: warning: cache entry {key} is unusable ({exc}); treating it as a miss")
            return None
        except Exception as exc:
            self._io_failed(f"reading {key}", exc)
            return None


def open_place(uri: str) -> Location:
    """The Location of the cache at `uri` (any installed transport's scheme); a directory is
    created when it can be, so a read-only first run finds an empty cache, not an error."""
    place = open_location(uri if uri.endswith("/") else uri + "/")
    ensure(place)
    return place


def open_cache(config: CacheConfig, log: Log) -> ActionCache | None:
    """The cache `config` names, or None when it is off."""
    if config.uri is None:
        return None
    return ActionCache(open_place(config.uri), config.write, log)
