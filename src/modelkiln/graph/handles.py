"""This process's handles the graph's modules share: the build log and the action-cache handle.

They sit apart from `execute` (which runs a task) so that `gather` (the engines of other
runners), the planner and the review can open the cache without importing the executor, and
`execute` can import `gather`: no module of the graph imports another that imports it back.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..cache import ActionCache, CacheConfig, open_cache, resolve

_CACHES: dict[CacheConfig, ActionCache | None] = {}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cache_for(config: CacheConfig | None, root: Path) -> ActionCache | None:
    """This process's cache handle (one per configuration; None when the cache is off)."""
    config = config if config is not None else resolve(root)
    if config not in _CACHES:
        _CACHES[config] = open_cache(config, log)
    return _CACHES[config]
