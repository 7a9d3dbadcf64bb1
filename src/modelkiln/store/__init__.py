"""The atomic on-disk model store: `<root>/<agent>/versions/<version>/` plus a `current` link.

This package's public names are the only ones the rest of modelkiln uses: the store itself
(`ModelStore`, read-only `StoreReader`), what a version looks like (`VersionInfo`), its sealed
manifest as a typed record (`StoreManifest`, `BundleRecord`, read by `read_manifest`), the tree
mechanics that verify and publish share (`scan`, `hash_tree`, `diff`, `stat_key`), and the one
OS-error wording (`os_errors`, `CannotRead`).
"""
from __future__ import annotations

from .fs import (
    CannotRead,
    Digests,
    Known,
    StatKey,
    Tree,
    diff,
    hash_tree,
    os_errors,
    scan,
    stat_key,
)
from .maintain import ModelStore
from .manifest import BUNDLE_DIR, MANIFEST, BundleRecord, StoreManifest
from .manifest import read as read_manifest
from .reader import StoreReader, VersionInfo, strict_from_env

__all__ = ["BUNDLE_DIR", "MANIFEST", "BundleRecord", "CannotRead", "Digests", "Known", "ModelStore", "StatKey",
    "StoreManifest", "StoreReader", "Tree", "VersionInfo", "diff", "hash_tree",
    "os_errors", "read_manifest", "scan", "stat_key", "strict_from_env"]
