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
import threading
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
from .uris import BadSourceUri, SourceUri

PART = 8 << 20
CONCURRENCY = 6  # ranged GETs in flight per file
PIECE = 256 << 10  # what `write` gets at a time: hashed, then written, while still in the CPU cache
SLOTS = 12
# Parts fetched but not yet written, over every file this process streams at once: memory is at
# most SLOTS x PART whatever the checkpoint's size or the number of files fetched in parallel
# (awscli's default is 10 requests of 8 MiB).


class _Buffers:
    """SLOTS reusable PART-sized buffers that ranged GETs read into (socket -> buffer, no other
    copy). A fresh buffer per response costs a page fault per 4 KiB touched, as much CPU as the
    hash; these are touched once, and dropped when the last stream of the process ends."""

    def __init__(self, count: int, size: int):
        self._free: list[bytearray] = []
        self._made = 0
        self._users = 0
        self._count, self._size = count, size
        self._cond = threading.Condition()

    def take(self, wait: bool) -> bytearray | None:
        with self._cond:
            while not self._free and self._made >= self._count:
                if not wait:
                    return None
                self._cond.wait()
            if self._free:
                return self._free.pop()
            self._made += 1
        return bytearray(self._size)

    def give(self, buf: bytearray) -> None:
        with self._cond:
            if self._users:
                self._free.append(buf)
            else:
                self._made -= 1
            self._cond.notify()

    def enter(self) -> None:
        with self._cond:
            self._users += 1

    def leave(self) -> None:
        with self._cond:
            self._users -= 1
            if not self._users:
                self._made -= len(self._free)
                self._free.clear()


BUFFERS = _Buffers(SLOTS, PART)


def _read_into(body: Any, view: memoryview) -> int:
    """Fill `view` from a GET's body; the bytes read (more than asked counts as len + 1). Straight
    from the socket into the buffer (http.client's readinto under urllib3, which botocore reads
    undecoded) when the body is the usual urllib3 response, else through botocore's chunks."""
    raw: Any = getattr(body, "_raw_stream", None)
    fp: Any = getattr(raw, "_fp", None)
    if fp is None or not hasattr(fp, "readinto") or not hasattr(raw, "release_conn"):
        got = 0
        for chunk in body.iter_chunks(PIECE):
            take = min(len(chunk), len(view) - got)
            view[got:got + take] = chunk[:take]
            got += take
            if take < len(chunk):
                return len(view) + 1
        return got
    got = 0
    try:
        while got < len(view):
            n = fp.readinto(view[got:])
            if not n:
                break
            got += n
    finally:
        raw.release_conn()
    return got


_CLIENT_LOCK = threading.Lock()
_CLIENT: list[Any] = []


def _shared_client() -> Any:
    """One boto3 client per process (they are thread-safe): each new one loads botocore's service
    model again, tens of MiB, and fetch threads asking at once would each make one."""
    with _CLIENT_LOCK:
        if not _CLIENT:
            _CLIENT.append(s3t.s3_client(s3t.TransferSettings(concurrency=16, checksum=None)))
        return _CLIENT[0]


def _key(src: SourceUri, path: str) -> str:
    return src.path if src.single else src.path + path


class S3Reader:
    def __init__(self, client: Any = None):
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _shared_client()
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

        def get(start: int, n: int, buf: bytearray) -> memoryview:
            view = memoryview(buf)[:n]
            for attempt in range(5):
                try:
                    body = self.client.get_object(Bucket=src.where, Key=key,
                                                  Range=f"bytes={start}-{start + n - 1}", **pin)["Body"]
                    if _read_into(body, view) == n:
                        return view
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
        BUFFERS.enter()
        with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="kiln-get") as pool:
            window: deque[tuple[Future[memoryview], bytearray]] = deque()

            def submit() -> bool:
                """Start the next range when one is left, holding a buffer until it is written;
                never waits while this file has a range in flight (a buffer frees when it lands)."""
                if len(window) >= CONCURRENCY:
                    return False
                buf = BUFFERS.take(wait=not window)
                if buf is None:
                    return False
                if (r := next(ranges, None)) is None:
                    BUFFERS.give(buf)
                    return False
                window.append((pool.submit(get, *r, buf), buf))
                return True
            try:
                while submit():
                    pass
                while window:
                    head, buf = window.popleft()
                    try:
                        view = head.result()
                        for at in range(0, len(view), PIECE):
                            write(view[at:at + PIECE])
                    finally:
                        BUFFERS.give(buf)
                    while submit():
                        pass
            finally:
                for fut, _buf in window:
                    fut.cancel()
                for fut, buf in window:  # a GET already running fills its buffer: let it end
                    try:
                        fut.result()
                    except BaseException:
                        pass
                    BUFFERS.give(buf)
                BUFFERS.leave()


def parse_source_uri(text: str) -> SourceUri:
    """s3://bucket/prefix/ (a directory) or s3://bucket/key (one file); sources.uris.parse."""
    bucket, _, key = text[len("s3://"):].partition("/")
    if not bucket or not key or key.startswith("/") or ".." in key.split("/"):
        raise BadSourceUri(text, "needs a bucket and a key or prefix",
                           "write s3://bucket/prefix/ (a directory) or s3://bucket/key (a file)")
    return SourceUri(text, "s3", bucket, key, single=not text.endswith("/"))


def source_reader() -> S3Reader:
    """This scheme's reader, for the transport scheme registry (`s3+source`)."""
    return S3Reader()
