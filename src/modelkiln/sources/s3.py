"""s3:// sources through boto3's standard chain (AWS_ENDPOINT_URL, profiles, instance roles).

Locking reads metadata only where the store gives a full-object SHA-256 (HEAD with ChecksumMode:
an object uploaded with SHA256 checksums in one part); otherwise each object is streamed once
through a hash into the fetch cache, so the first build after `kiln lock` fetches nothing. ETags
are not digests (MD5, or a hash of part hashes) and are used only as the object's identity: every
ranged GET is pinned to the locked ETag with If-Match (or to the version id on a versioned bucket),
so an object replaced after locking is a 412, which is drift, not a silent mix of versions.

The ranged download is our own (not s3transfer's) for two things it lacks: starting at an offset
(resume) and delivering the bytes in order so they are hashed as they arrive.
"""
from __future__ import annotations

import base64
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..artifacts.digest import canonical_json, sha256_bytes
from ..errors import KilnError
from ..transport import s3 as s3t
from .lockfile import LockedFile, LockEntry
from .scheme import Ingest, Write
from .uris import SourceUri

PART = 8 << 20
CONCURRENCY = 8  # ranged GETs in flight per file
PIECE = 256 << 10


def _key(src: SourceUri, path: str) -> str:
    return src.path if src.single else src.path + path


class S3Reader:
    def __init__(self, client: Any = None):
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3t.s3_client(s3t.TransferSettings(concurrency=16, checksum=None))
        return self._client

    def _objects(self, src: SourceUri) -> Iterator[tuple[str, str, int]]:
        """(relative path, key, size) of every object of the source."""
        if src.single:
            head = self._call(f"HEAD {src.uri}", lambda: self.client.head_object(
                Bucket=src.where, Key=src.path))
            yield src.path.rsplit("/", 1)[-1], src.path, head["ContentLength"]
            return
        token: dict[str, str] = {}
        while True:
            args = {"Bucket": src.where, "Prefix": src.path, **token}
            page = self._call(f"LIST {src.uri}", lambda a=args: self.client.list_objects_v2(**a))
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(src.path):]
                if rel and not rel.endswith("/"):
                    yield rel, obj["Key"], obj["Size"]
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def _call(self, what: str, action: Any) -> Any:
        try:
            return s3t.with_retries(what, action)
        except KilnError:
            raise
        except Exception as exc:
            raise KilnError(f"{what}: {s3t.error_code(exc) or exc}; check the URI and the "
                            "credentials boto3 finds (AWS_PROFILE, AWS_ENDPOINT_URL, ...)") from None

    def resolve(self, src: SourceUri, ingest: Ingest) -> LockEntry:
        from concurrent.futures import ThreadPoolExecutor as Pool

        from .fetch import jobs

        objects = list(self._objects(src))
        if not objects:
            raise KilnError(f"{src.uri}: no objects there; check the prefix (end a directory "
                            "with '/')")

        def one(obj: tuple[str, str, int]) -> LockedFile:
            rel, key, size = obj
            head = self._call(f"HEAD s3://{src.where}/{key}", lambda: self.client.head_object(
                Bucket=src.where, Key=key, ChecksumMode="ENABLED"))
            version = head.get("VersionId")
            ref = f"version:{version}" if version and version != "null" else f"etag:{head['ETag']}"
            full = head.get("ChecksumSHA256")
            if full and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT" and "-" not in full:
                return LockedFile(rel, size, base64.b64decode(full).hex(), ref)
            locked = LockedFile(rel, size, "0" * 64, ref)
            return ingest(rel, size, ref, lambda off, write: self.stream(src, locked, off, write))

        with Pool(jobs(), thread_name_prefix="kiln-lock") as pool:
            files = tuple(sorted(pool.map(one, objects), key=lambda f: f.path))
        resolved = "sha256:" + sha256_bytes(canonical_json([[f.path, f.ref] for f in files]))
        return LockEntry(src.uri, resolved, files)

    def stream(self, src: SourceUri, f: LockedFile, offset: int, write: Write) -> None:
        from .fetch import drift

        key = _key(src, f.path)
        pin = ({"VersionId": f.ref[8:]} if f.ref.startswith("version:")
               else {"IfMatch": f.ref[5:]} if f.ref.startswith("etag:") else {})

        def get(start: int, n: int) -> list[bytes]:
            for attempt in range(5):
                try:
                    body = self.client.get_object(Bucket=src.where, Key=key,
                                                  Range=f"bytes={start}-{start + n - 1}", **pin)["Body"]
                    pieces = list(body.iter_chunks(PIECE))
                    if sum(map(len, pieces)) == n:
                        return pieces
                    raise OSError(f"short read at {start}")
                except Exception as exc:
                    status = s3t.status_of(exc)
                    if status == 412:
                        raise drift(src.uri, f, "changed", "another object (its ETag changed)") from None
                    if status == 404 or s3t.error_code(exc) in ("NoSuchKey", "NoSuchVersion"):
                        raise drift(src.uri, f, "missing") from None
                    if s3t.is_permanent(exc) or attempt == 4:
                        raise KilnError(f"GET s3://{src.where}/{key}: {s3t.error_code(exc) or exc}; "
                                        "run the build again to resume") from None
                    time.sleep(0.5 * 2 ** attempt)
            raise AssertionError("unreachable")

        ranges = iter([(o, min(PART, f.size - o)) for o in range(offset, f.size, PART)])
        with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="kiln-get") as pool:
            window: deque[Future[list[bytes]]] = deque()
            try:
                for r in ranges:
                    window.append(pool.submit(get, *r))
                    if len(window) >= 2 * CONCURRENCY:
                        break
                while window:
                    pieces = window.popleft().result()
                    if (more := next(ranges, None)) is not None:
                        window.append(pool.submit(get, *more))
                    for piece in pieces:
                        write(piece)
            finally:
                for fut in window:
                    fut.cancel()
