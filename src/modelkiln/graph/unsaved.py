"""Records a trusted run still owes the cache: one small file per task under `.kiln/unsaved/`.

A run that may write the cache files the task's action record here before it writes the stamp,
and removes it once the record is stored (or another writer's record for the key is). A run
killed in between, or whose save failed, leaves the file behind; the next run that may write
finds the task up to date with the file still here, so it runs the task's action, which saves the
record instead of building (`execute`). Without this, a kill after the stamp left the record
unsaved for good: every later run found the task up to date and never looked at the cache.

Kept light (no cache import): the up-to-date check asks `pending` for every task, which lists
the directory once per process.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..artifacts.atomic import write_bytes
from ..artifacts.statefile import read_regular

if TYPE_CHECKING:
    from ..cache import CacheConfig

DIR = "unsaved"
LIMIT = 16 << 20  # an action record's own limit
_LISTED: dict[Path, frozenset[str]] = {}


def path(state: Path, task: str) -> Path:
    return state / DIR / f"{quote(task, safe='')}.json"


def pending(state: Path, task: str) -> bool:
    """Whether `task` left a record unsaved (the directory is listed once per process)."""
    if state not in _LISTED:
        try:
            _LISTED[state] = frozenset(os.listdir(state / DIR))
        except OSError:
            _LISTED[state] = frozenset()
    return path(state, task).name in _LISTED[state]


def may_save(config: CacheConfig | None, root: Path) -> bool:
    """Whether this run may write the cache (only then is an unsaved record worth a task run)."""
    from ..cache import resolve

    resolved = config if config is not None else resolve(root)
    return resolved.uri is not None and resolved.write


def mark(state: Path, task: str, record: bytes) -> None:
    """File `record` as owed (best effort: where it cannot be filed, the save right after it is
    all there is, as before unsaved records were kept)."""
    with contextlib.suppress(OSError):
        write_bytes(path(state, task), record)
    _LISTED.pop(state, None)


def read(state: Path, task: str) -> bytes | None:
    """The record filed for `task`, or None (absent, or not a regular file of at most 16 MiB:
    local state is read without trusting it, as artifacts.statefile says)."""
    return read_regular(path(state, task), LIMIT)


def clear(state: Path, task: str) -> None:
    with contextlib.suppress(OSError):
        path(state, task).unlink()
        _LISTED.pop(state, None)
