"""A damaged stat-cache file costs a re-hash, never a wrong digest."""
from __future__ import annotations

import json
import os
from pathlib import Path

from modelkiln.artifacts.digest import StatCache, sha256_file


def test_malformed_entry_is_rehashed_not_trusted(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x" * 1000)
    os.utime(f, ns=(10**18, 10**18))  # old enough not to be racy
    st = os.stat(f)
    key = f"{st.st_dev}:{st.st_ino}"
    cache_file = tmp_path / "cache.json"
    for bad in ([st.st_size, st.st_mtime_ns, 1234, str(f)], [st.st_size, st.st_mtime_ns],
                "not a list"):
        cache_file.write_text(json.dumps({"version": StatCache.VERSION, "entries": {key: bad}}))
        cache = StatCache(cache_file)
        assert cache.peek(f) is None
        assert cache.digest(f) == sha256_file(f)
        assert cache.hashed == [str(f)]
