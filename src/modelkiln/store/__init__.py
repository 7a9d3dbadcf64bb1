"""The atomic on-disk model store: `<root>/<agent>/versions/<version>/` plus a `current` link.

This package's public names are the only ones the rest of modelkiln uses: the store itself
(`ModelStore`, read-only `StoreReader`), what a version looks like (`VersionInfo`), its sealed
manifest (`read_manifest`, `manifest_problems`, `expected_files`, `MANIFEST`), and the tree
mechanics that verify and publish share (`scan`, `hash_tree`, `diff`, `stat_key`).
"""
from __future__ import annotations

from .fs import Digests, Known, StatKey, Tree, diff, hash_tree, scan, stat_key
from .manifest import MANIFEST
from .manifest import expected_files as expected_files
from .manifest import problems as manifest_problems
from .manifest import read as read_manifest
from .reader import StoreReader, VersionInfo, strict_from_env
from .writer import ModelStore

__all__ = ["MANIFEST", "Digests", "Known", "ModelStore", "StatKey", "StoreReader", "Tree",
           "VersionInfo", "diff", "expected_files", "hash_tree", "manifest_problems",
           "read_manifest", "scan", "stat_key", "strict_from_env"]
