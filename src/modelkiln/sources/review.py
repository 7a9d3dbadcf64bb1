"""What a PR did to a bundle's remote sources, in one line each, for the plan comment.

"checkpoint: s3://…/run-122 → run-123, 3 of 4 shards changed, +0.0 MB": the base's lock (read
from git) against the working tree's. A source is matched to the base entry of the same URI, or
else to the base entry sharing the most file paths (a new training run under a new prefix keeps
its shard names). Shards are the weight files (.safetensors, .bin); a source without any counts
files. Nothing here reads a remote store.
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import proc
from ..errors import KilnError
from .lockfile import LockEntry, lock_path, parse, read
from .uris import short

_WEIGHTS = (".safetensors", ".bin")


def base_lock(spec: Path, ref: str) -> dict[str, LockEntry]:
    """The lock beside `spec` as it is at git `ref` ({} when it is not there or not a lock)."""
    lock = lock_path(spec).resolve()
    try:
        top = proc.run(["git", "rev-parse", "--show-toplevel"], cwd=lock.parent, timeout=30,
                       check=False).stdout.strip()
        rel = lock.relative_to(top).as_posix()
        shown = proc.run(["git", "show", f"{ref}:{rel}"], cwd=Path(top), timeout=60, check=False)
        return parse(json.loads(shown.stdout)) if shown.returncode == 0 else {}
    except (KilnError, ValueError, KeyError, TypeError, RecursionError):
        return {}


def _match(new: LockEntry, old: dict[str, LockEntry]) -> LockEntry | None:
    if new.uri in old:
        return old[new.uri]
    paths = {f.path for f in new.files}
    best = max(old.values(), key=lambda e: len(paths & {f.path for f in e.files}), default=None)
    return best if best is not None and paths & {f.path for f in best.files} else None


def _moved_uri(old: str, new: str) -> str:
    if old == new:
        return short(new)
    head, _, tail = new.rstrip("/").rpartition("/")
    if old.rstrip("/").rpartition("/")[0] == head:
        return f"{short(old)} → {tail}"
    return f"{short(old)} → {short(new)}"


def line(role: str, new: LockEntry, old: LockEntry | None) -> str | None:
    """The comment line of one source, or None when it did not move."""
    if old is None:
        return f"{role}: {short(new.uri)} (new, {len(new.files)} files, {new.size / 1e6:.1f} MB)"
    if old.uri == new.uri and old.files == new.files:
        return None
    weights = [f for f in new.files if f.path.endswith(_WEIGHTS)]
    what = "shards" if weights else "files"
    pool = weights or list(new.files)
    before = {f.path: f.sha256 for f in old.files}
    changed = sum(before.get(f.path) != f.sha256 for f in pool)
    return (f"{role}: {_moved_uri(old.uri, new.uri)}, {changed} of {len(pool)} {what} changed, "
            f"{(new.size - old.size) / 1e6:+.1f} MB")


def moves(spec: Path, roles: dict[Path, str], ref: str) -> list[str]:
    """One line per remote source of the spec whose lock entry moved since `ref`; `roles` maps a
    source's local place (tree directory or file) to how the comment names it."""
    try:
        now = read(lock_path(spec)) or {}
    except KilnError:
        return []
    if not now:
        return []
    from .cache import FetchCache

    cache = FetchCache()
    old = base_lock(spec, ref)
    out = []
    for entry in sorted(now.values(), key=lambda e: e.uri):
        tree = cache.tree_dir(entry)
        role = next((r for p, r in roles.items() if p == tree or p.parent == tree), "source")
        text = line(role, entry, _match(entry, old))
        if text:
            out.append(text)
    return out
