"""The layered model registry: curated + discovered layers, a regenerated snapshot, verify and lock.

Everything here returns data; `cli.py` prints. See `layers.py` for the files, `entries.py` for the
static/dynamic split, `ops.py` for the verbs.
"""
from ..paths import registry_dir
from .entries import DYNAMIC, STATIC, Artifacts, FileRecord, RegistryEntry, VersionLock
from .layers import CURATED, DISCOVERED, SNAPSHOT, RegistryFiles
from .ops import (
    Selection,
    VerifyResult,
    layers,
    list_entries,
    lock,
    locked_entries,
    record_discovered,
    refuse_locked,
    regenerate,
    select,
    store_versions_in_use,
    unlock,
    verify,
)

__all__ = [
    "CURATED", "DISCOVERED", "DYNAMIC", "SNAPSHOT", "STATIC", "Artifacts", "FileRecord",
    "RegistryEntry", "RegistryFiles", "Selection", "VerifyResult", "VersionLock", "layers",
    "list_entries", "lock", "locked_entries", "record_discovered", "refuse_locked", "regenerate", "registry_dir", "select",
    "store_versions_in_use", "unlock", "verify",
]
