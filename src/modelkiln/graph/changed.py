"""`kiln changed`: which bundles a CI run must build, from specs, git and the inputs that exist.

CI runs this in a fresh clone, where inputs made by code (this repository's `bundles/*/` are
generated and gitignored) or LFS objects are often absent, so a spec may not convert into a
`Bundle` there. Such a spec is still decided on: its watched paths are read from the spec text
itself (every relative path it names, plus files beside it that carry its stem, like
`<name>.image.lock`). A spec that converts gets the exact list: its spec, every input a task of it
lists and its checkpoint and tokenizer directories (`basegit.bundle_paths`).

A bundle counts as changed when one of its watched paths differs between the base and the working
tree (git diff, untracked files included), or when an input git does not track (a gitignored
file that exists here) is not what the bundle's last build here recorded in its stamps: git cannot
say whether an ignored file changed since a commit, the stamps can (no stamp: changed).

The base is a ref, or (`--last-good TAG`) the commit of a tag the main branch moves after each
successful publish: every change since the last publish that went through is built again, so a run
that was replaced by a newer push or that failed loses nothing. A tag that is absent or not an
ancestor of HEAD gives the empty tree: every bundle.

`--shards N` packs the names into at most N matrix legs (space-separated names per leg), so an
empty-tree base over hundreds of bundles stays under GitHub's 256-job matrix limit.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts.digest import StatCache, stat_cache
from ..errors import KilnError, UsageError
from ..model import BrokenSpec, Bundle
from ..paths import Layout
from . import basegit
from .state import digest_or_missing, rel_to

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's empty tree: "everything changed"


@dataclass(frozen=True)
class Watched:
    """What one bundle's build depends on, as paths (resolved, absolute)."""

    name: str
    files: frozenset[Path]
    dirs: tuple[Path, ...]
    exact: bool  # from the converted bundle (True) or read off the spec text (False)


def watched_bundle(bundle: Bundle) -> Watched:
    files, dirs = basegit.bundle_paths(bundle)
    return Watched(bundle.name, frozenset(files | set(_beside(bundle.spec_path))), dirs, True)


def watched_spec(broken: BrokenSpec) -> Watched:
    """The paths a spec that does not convert here names: its own file, files beside it with its
    stem, and every relative path string in it (a file or a directory, present or not)."""
    from ..spec import load_document

    spec = broken.spec_path.resolve()
    named: set[Path] = set()
    try:
        data = load_document(broken.spec_path).data
    except KilnError:  # not even YAML: only the spec file itself is known
        data = None
    for value in _strings(data):
        if _looks_like_path(value):
            named.add(Path(os.path.normpath(spec.parent / value)))
    files = {spec, *_beside(spec), *named}
    return Watched(broken.name, frozenset(files), tuple(sorted(named)), False)


def _beside(spec: Path) -> list[Path]:
    stem = spec.name.rsplit(".", 1)[0]
    try:
        return [p.resolve() for p in spec.parent.iterdir()
                if p.name.startswith(stem + ".") and p.is_file()]
    except OSError:
        return []


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _looks_like_path(value: str) -> bool:
    """A relative path a spec names (`registry-v3/checkpoint`), not a URI, a tag or a version."""
    return ("/" in value and "://" not in value and not value.startswith(("/", "oci:"))
            and "\n" not in value and len(value) < 1024 and "@" not in value
            and "{" not in value)


def resolve_base(root: Path, ref: str | None, last_good: str | None = None) -> str:
    """The commit (or tree) to diff against. `last_good`: that tag's commit when it is an ancestor
    of HEAD, else the empty tree. A `ref` git does not know is a usage error (exit 64)."""
    if last_good is not None:
        found = basegit.git(root, "rev-parse", "--verify", "--quiet", f"{last_good}^{{commit}}",
                            check=False)
        commit = found.stdout.strip()
        if found.returncode or not commit:
            return EMPTY_TREE
        ancestor = basegit.git(root, "merge-base", "--is-ancestor", commit, "HEAD", check=False)
        return commit if ancestor.returncode == 0 else EMPTY_TREE
    assert ref is not None
    return check_ref(root, ref)


def check_ref(root: Path, ref: str) -> str:
    """`ref` as given when git knows it (a commit or a tree); UsageError naming it otherwise."""
    done = basegit.git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{tree}}", check=False)
    if done.returncode:
        raise UsageError(f"{ref!r}: not a commit or tree git knows here; fetch it first "
                         "(in CI: `git fetch origin main`, or check out with fetch-depth: 0)")
    return ref


def changed(bundles: Sequence[Bundle], broken: Sequence[BrokenSpec], root: Path,
            base: str) -> list[str]:
    """Names of the bundles (and broken specs) whose watched paths changed since `base`."""
    watched = [watched_bundle(b) for b in bundles] + [watched_spec(b) for b in broken if b.name]
    if not watched:
        return []
    diff = basegit.changed_paths(root, base)
    ignored = _ignored(root, watched)
    recorded = _recorded(root, [w.name for w in watched])
    stat = stat_cache(Layout(root).state)
    index: dict[Path, set[str]] = {}  # watched path -> the bundles watching it
    for w in watched:
        for path in (*w.files, *w.dirs):
            index.setdefault(path, set()).add(w.name)
    out: set[str] = set()
    for path in diff:
        out.update(*_watchers(index, path))
    for path in ignored:
        for name in set().union(*_watchers(index, path)) - out:
            if not _as_built(path, root, recorded.get(name, {}), stat):
                out.add(name)
    stat.save()
    return sorted(out)


def _watchers(index: dict[Path, set[str]], path: Path) -> list[set[str]]:
    """The bundles watching `path` itself or a directory above it."""
    return [index[p] for p in (path, *path.parents) if p in index]


def _ignored(root: Path, watched: Sequence[Watched]) -> list[Path]:
    """Files under the watched paths that exist here but git ignores."""
    top = basegit.toplevel(root)
    specs = sorted({os.path.relpath(p, top) for w in watched for p in (*w.files, *w.dirs)
                    if _inside(p, top) and os.path.lexists(p)})
    if not specs:
        return []
    listed = basegit.git(top, "ls-files", "-z", "--others", "--ignored", "--exclude-standard",
                         "--", *specs).stdout
    return [(top / p).resolve() for p in listed.split("\0") if p]


def _inside(path: Path, top: Path) -> bool:
    return path == top or top in path.parents


def _recorded(root: Path, names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Per bundle: every input digest its stamps here record (rel path -> digest)."""
    from ..artifacts.statefile import load_json

    layout = Layout(root)
    out: dict[str, dict[str, str]] = {}
    for name in names:
        seen: dict[str, str] = {}
        folder = layout.stamp(name, "x").parent
        try:
            stamps = sorted(folder.glob("*.json"))
        except OSError:
            stamps = []
        for stamp in stamps:
            doc = load_json(stamp)
            inputs = doc.get("inputs") if isinstance(doc, dict) else None
            if isinstance(inputs, dict):
                seen.update({k: v for k, v in inputs.items()
                             if isinstance(k, str) and isinstance(v, str)})
        out[name] = seen
    return out


def _as_built(path: Path, root: Path, recorded: dict[str, str], stat: StatCache) -> bool:
    """True when the last build here recorded `path` with the digest it has now."""
    old = recorded.get(rel_to(path, root))
    return old is not None and digest_or_missing(stat, path) == old


def shards(names: Sequence[str], count: int) -> list[str]:
    """`names` in at most `count` legs of nearly equal size, in order; each leg's names joined
    by spaces (bundle names hold none)."""
    if count < 1:
        raise UsageError(f"--shards {count}: give 1 or more legs")
    if not names:
        return []
    per = math.ceil(len(names) / count)
    return [" ".join(names[i:i + per]) for i in range(0, len(names), per)]
