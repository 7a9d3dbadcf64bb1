"""Run as a script by the fetch tests: lock or fetch one s3:// source into a fetch cache, in a
process of its own (so a test can kill it mid-fetch, or run two at once). Prints the bytes it moved."""
from __future__ import annotations

import sys
from pathlib import Path

from modelkiln.sources.cache import FetchCache
from modelkiln.sources.fetch import ensure
from modelkiln.sources.lockfile import read

if __name__ == "__main__":
    lock, uri, cache = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    entries = read(lock) or {}
    print(ensure([entries[uri]], None, None, FetchCache(cache)), flush=True)
