"""Parallel ranged S3 download that hashes the bytes in order as it writes them: one pass.

s3transfer writes ranges in whatever order they arrive, so the file has to be read again to learn
its sha256; on a CPU that hashes ~600 MB/s that second pass costs about as much as the transfer.
Here worker threads fetch ranges concurrently while the calling thread writes them in order
through `HashingWriter`, so hashing overlaps the network and the digest is ready when the last
byte lands. Every range is pinned to the object's ETag (If-Match), so an object replaced mid-way
fails instead of mixing two versions. Memory: at most `2 x concurrency` parts in flight (a slow
range at the head must not idle the other workers).
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..errors import PublishError
from . import s3
from .fetch import DigestMismatch

# Parts are read and kept as 256 KiB pieces, never joined: a fresh multi-MiB buffer per part costs
# a page fault per 4 KiB on first touch, which on a VM is slower than the network.
PIECE = 256 << 10


def s3_download(client: Any, bucket: str, key: str, out: Any, *, size: int,
                settings: s3.TransferSettings,
                progress: Callable[[int], None] | None = None) -> None:
    """Write s3://bucket/key into the writer `out` in order; PublishError if it is not `size`."""
    uri = f"s3://{bucket}/{key}"
    head = s3.with_retries(f"HEAD {uri}", lambda: client.head_object(Bucket=bucket, Key=key),
                              settings)
    if head["ContentLength"] != size:
        raise DigestMismatch(uri, size, head["ContentLength"])
    etag = head["ETag"]
    part = settings.part_size
    ranges = iter([(off, min(part, size - off)) for off in range(0, size, part)])

    def get(off: int, n: int) -> list[bytes]:
        for attempt in range(settings.max_attempts):
            try:
                body = client.get_object(Bucket=bucket, Key=key, IfMatch=etag,
                                         Range=f"bytes={off}-{off + n - 1}")["Body"]
                pieces = list(body.iter_chunks(PIECE))
                got = sum(map(len, pieces))
                if got == n:
                    return pieces
                raise OSError(f"short read at {off}: {got} of {n} bytes")
            except Exception as exc:
                if s3.status_of(exc) == 412:
                    raise PublishError(f"{uri}: replaced while downloading; run the bootstrap "
                                       "again") from None
                if s3.is_permanent(exc) or attempt + 1 == settings.max_attempts:
                    raise
                time.sleep(settings.backoff * (2 ** attempt))
        raise AssertionError("unreachable")

    with ThreadPoolExecutor(settings.concurrency, thread_name_prefix="kiln-get") as pool:
        window: deque[Future[list[bytes]]] = deque()
        try:
            for _ in range(2 * settings.concurrency):
                if (r := next(ranges, None)) is not None:
                    window.append(pool.submit(get, *r))
            while window:
                pieces = window.popleft().result()
                if (r := next(ranges, None)) is not None:
                    window.append(pool.submit(get, *r))
                for piece in pieces:
                    out.write(piece)
                    if progress:
                        progress(len(piece))
        finally:
            for future in window:
                future.cancel()
