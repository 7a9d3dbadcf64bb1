"""Reading the files modelkiln keeps for itself (stamps, verdicts, the stat cache, cached specs and
bundles), trusting none of them.

Any of them may be corrupt, the wrong shape, JSON nested deeper than the parser can follow, or
not a file at all: a FIFO blocks a read for ever, `/dev/zero` never ends, a directory cannot be
read. So each is opened without blocking and read only when `fstat` says it is a regular file of
at most `limit` bytes; anything else, and JSON that does not parse (RecursionError included),
reads as None. Callers treat None as a miss: it costs the work the file would have saved, never a
traceback or a hang. Shape checks stay with each reader, which knows its record.
"""
from __future__ import annotations

import json
import os
import stat

MAX_STATE_BYTES = 256 << 20  # far above any real state file; bounds what a hostile one costs
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def read_regular(path: str | os.PathLike[str], limit: int = MAX_STATE_BYTES) -> bytes | None:
    """The bytes of `path` when it is a regular file of at most `limit` bytes, else None."""
    try:
        fd = os.open(path, _FLAGS)
    except (OSError, ValueError):  # ValueError: a NUL in the name
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        chunks: list[bytes] = []
        got = 0
        while chunk := os.read(fd, max(st.st_size + 1 - got, 1 << 16)):
            chunks.append(chunk)
            got += len(chunk)
            if got > limit:  # grew while it was read
                return None
        return b"".join(chunks)  # one chunk: returned as is, not copied
    except OSError:
        return None
    finally:
        os.close(fd)


def load_json(path: str | os.PathLike[str], limit: int = MAX_STATE_BYTES) -> object:
    """The parsed JSON of `path`, or None when it is not a readable regular file of valid JSON."""
    data = read_regular(path, limit)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
