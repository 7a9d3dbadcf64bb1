"""The remote action cache: content-addressed blobs, action records last, every read verified.

`resolve` answers where the cache is and whether this run may write it; `open_cache` gives an
`ActionCache` to look keys up, restore outputs and save them. Keys are computed by the graph
(it knows stages, inputs and upstream stamps); this package only stores and checks bytes.
"""
from __future__ import annotations

from .actions import ActionCache, Restored, blob_key, open_cache, open_place, record_key
from .config import CacheConfig, resolve
from .records import ActionRecord, BadRecord, BlobRef, Expected

__all__ = ["ActionCache", "ActionRecord", "BadRecord", "BlobRef", "CacheConfig", "Expected",
           "Restored", "blob_key", "open_cache", "open_place", "record_key", "resolve"]
