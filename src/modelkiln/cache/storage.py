"""The two places a cache can live, behind one small interface: a local directory and S3.

Kept small on purpose so it can move onto a shared transport interface without touching the cache
logic: object names are '/'-separated keys under the cache root, and a few operations suffice
(size, small read, verified fetch, blob put, conditional put, and a listing of one prefix for
the TensorRT engine index).

- A blob put is unconditional: the key is the content's digest, so two writers write the same
  bytes; a multipart upload that is killed leaves no object at all.
- `put_if_absent` is the commit point for records. On S3 it is `If-None-Match: *` (412 means
  another writer won); on a directory it is `link(2)` of a complete file, which fails with
  EEXIST instead of replacing, so the first writer wins there too and a reader never sees a
  half-written record.
- `fetch` hashes while it writes and raises `Mismatch` when size or sha256 differ from what the
  record promised: the caller treats that as a miss. It never takes more than the record's size
  plus one byte, so a larger (or endless) blob costs no more than that; `read` likewise refuses
  what is over its limit instead of cutting it.
- A directory (`localdir.LocalStorage`) reads only regular files, never through a symlink, and
  writes each file unnamed until it is linked into place.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from ..artifacts.digest import HashingWriter, sha256_bytes
from ..transport import s3 as s3t
from ..transport.uris import parse_s3, scheme_of
from .localdir import LocalStorage
from .protocol import CHUNK, Mismatch, Storage, Unusable, check

__all__ = ["LocalStorage", "LocationStorage", "Mismatch", "S3Storage", "Storage", "Unusable",
           "open_storage"]

SMALL = 8 << 20  # below this a blob is one GET; above it, parallel ranged GETs
LIST_PAGE = 1000  # keys per ListObjectsV2 page (S3's maximum)


class S3Storage:
    """A cache under s3://bucket/prefix, through boto3's standard credential chain."""

    def __init__(self, uri: str, settings: s3t.TransferSettings = s3t.DEFAULT):
        self.uri = uri
        self.bucket, prefix = parse_s3(uri)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.settings = settings
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3t.s3_client(self.settings)
        return self._client

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _retry(self, what: str, action: Any) -> Any:
        return s3t.with_retries(f"{what} s3://{self.bucket}/", action, self.settings)

    def size(self, key: str) -> int | None:
        def head() -> int | None:
            try:
                return int(self.client.head_object(Bucket=self.bucket,
                                                   Key=self._key(key))["ContentLength"])
            except Exception as exc:
                if s3t.status_of(exc) == 404:
                    return None
                raise
        result: int | None = self._retry(f"HEAD {key}", head)
        return result

    def _fast(self, key: str, limit: int) -> bytes | None:
        """The stdlib-only signed GET (no boto3 import, which costs a cold runner ~0.4 s) where
        it applies; None means "ask boto3" (also for a missing object)."""
        from ..transport.s3lite import get_small

        return get_small(self.bucket, self._key(key), limit=limit) if self._client is None else None

    def read(self, key: str, limit: int) -> bytes | None:
        fast = self._fast(key, limit)
        if fast is not None:
            return fast

        def get() -> bytes | None:
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            except Exception as exc:
                if s3t.status_of(exc) == 404:
                    return None
                raise
            data: bytes = body.read(limit + 1)
            body.close()
            return data
        result: bytes | None = self._retry(f"GET {key}", get)
        if result is not None and len(result) > limit:  # refused, not cut to a torn prefix
            raise Unusable(f"{key}: larger than {limit} bytes")
        return result

    def fetch(self, key: str, dest: Path, size: int, sha256: str) -> None:
        from ..errors import PublishError
        from ..transport.ranged import s3_download

        fast = self._fast(key, size) if size <= SMALL else None
        if fast is not None:
            dest.write_bytes(fast)
            check(len(fast), sha256_bytes(fast), size, sha256, key)
            return

        def once() -> tuple[int, str]:
            with open(dest, "wb") as raw:
                out = HashingWriter(raw)
                if size > SMALL:
                    s3_download(self.client, self.bucket, self._key(key), out, size=size,
                                settings=self.settings)
                else:
                    body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
                    for chunk in body.iter_chunks(CHUNK):
                        out.write(chunk[:size + 1 - out.size])
                        if out.size > size:  # more than the record says: stop, it is a miss
                            break
                    body.close()
            return out.size, out.hexdigest()

        try:
            got, digest = self._retry(f"GET {key}", once)
        except PublishError as exc:  # ranged download's own size check (HEAD) failed
            raise Mismatch(str(exc)) from None
        except Exception as exc:
            if s3t.status_of(exc) == 404:
                raise Mismatch(f"{key}: missing from the cache") from None
            raise
        check(got, digest, size, sha256, key)

    def put_file(self, key: str, path: Path) -> None:
        config = s3t.transfer_config(self.settings)
        self._retry(f"PUT {key}", lambda: self.client.upload_file(
            str(path), self.bucket, self._key(key), Config=config))

    def put(self, key: str, data: bytes) -> None:
        self._retry(f"PUT {key}", lambda: self.client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        def put() -> bool:
            for attempt in range(5):
                try:
                    self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                           IfNoneMatch="*")
                    return True
                except Exception as exc:
                    status = s3t.status_of(exc)
                    if status == 412:
                        return False  # another writer's record is there: it wins
                    if status != 409 or attempt == 4:
                        raise
                    # 409: a concurrent conditional write is in flight; its outcome decides
                    time.sleep(0.2 * (attempt + 1))
            return False
        result: bool = self._retry(f"PUT {key}", put)
        return result

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted: ListObjectsV2, following continuation tokens
        (through the stdlib signed GET where it applies, like `read`: no boto3 import)."""
        from ..transport.s3lite import list_keys

        fast = list_keys(self.bucket, self._key(prefix), page=LIST_PAGE) \
            if self._client is None else None
        if fast is not None:
            return sorted(k[len(self.prefix):] for k in fast)

        def pages() -> list[str]:
            keys: list[str] = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix),
                                           PaginationConfig={"PageSize": LIST_PAGE}):
                keys.extend(o["Key"][len(self.prefix):] for o in page.get("Contents", []))
            return keys
        result: list[str] = self._retry(f"LIST {prefix}", pages)
        return sorted(result)


class LocationStorage:
    """A cache on an installed plug-in transport's scheme, through its `Location` (the one
    registry of schemes, transport.schemes). Its fetch checks size and sha256 like the others, a
    mismatch or a missing blob is `Mismatch` (a miss), and records are written if absent (first
    writer wins) with the Location's conditional write."""

    def __init__(self, uri: str):
        from ..transport import open_location

        self.uri = uri
        self.place = open_location(uri if uri.endswith("/") else uri + "/")

    def size(self, key: str) -> int | None:
        info = self.place.head(key)
        return info.size if info is not None else None

    def read(self, key: str, limit: int) -> bytes | None:
        size = self.size(key)
        if size is None:
            return None
        if size > limit:
            raise Unusable(f"{key}: larger than {limit} bytes")
        return self.place.get_small(key, limit)

    def fetch(self, key: str, dest: Path, size: int, sha256: str) -> None:
        from ..transport import DigestMismatch

        if self.size(key) is None:
            raise Mismatch(f"{key}: missing from the cache")
        try:
            self.place.fetch(key, dest, size=size, sha256=sha256)
        except DigestMismatch as exc:
            raise Mismatch(str(exc)) from None

    def put_file(self, key: str, path: Path) -> None:
        from ..artifacts.digest import sha256_file

        self.place.upload_file(key, path, size=path.stat().st_size, sha256=sha256_file(path))

    def put(self, key: str, data: bytes) -> None:
        self.place.put_bytes(key, data, content_type="application/octet-stream")

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from ..transport import IF_ABSENT, PreconditionFailed

        try:
            self.place.put_bytes(key, data, IF_ABSENT)
        except PreconditionFailed:
            return False  # another writer's record is there: it wins
        return True

    def list_keys(self, prefix: str) -> list[str]:
        return self.place.list_keys(prefix)


def open_storage(uri: str) -> Storage:
    if scheme_of(uri) == "s3":
        return S3Storage(uri)
    if scheme_of(uri) != "file":  # an installed transport's scheme
        return LocationStorage(uri)
    storage = LocalStorage(uri)
    with contextlib.suppress(OSError):
        storage.root.mkdir(parents=True, exist_ok=True)
    return storage
