"""What git says about a base ref: changed paths, the base's version of a spec, its ancestors.

Used by `kiln changed` / `kiln plan --changed-since REF` (graph/changed.py decides the bundles a
CI matrix must build) and by the review markdown (the spec keys a change touches). A bundle
counts as changed when its spec file, any input file a task of it lists, or anything under its
checkpoint or tokenizer directory differs between REF and the working tree (untracked files
included): a new shard or a deleted file in a checkpoint counts even though no task of the new
plan names it.
"""
from __future__ import annotations

import functools
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .. import proc
from ..errors import KilnError
from ..model.bundle import Bundle
from .mdsafe import code, text
from .plans import plan_bundle

ANCESTORS = 20  # how far back the review looks for a base commit a trusted build indexed


def _git(root: Path, *args: str, check: bool = True,
         timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run git in `root` (proc.run: a missing git or a hang is one KilnError line)."""
    done = proc.run(["git", *args], cwd=root, timeout=timeout, check=False)
    if check and done.returncode:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise KilnError(f"git {' '.join(args)}: {tail[0]}; check the ref exists here "
                        "(in CI: fetch the base branch, e.g. `git fetch origin main`)")
    return done


@functools.cache
def clean_head(root: Path) -> str | None:
    """The commit a clean git checkout at `root` is at; None if not git or it has local edits."""
    try:
        head = _git(root, "rev-parse", "HEAD", check=False, timeout=10)
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no", check=False,
                     timeout=30)
    except KilnError:
        return None
    if head.returncode or dirty.returncode or dirty.stdout.strip():
        return None
    return head.stdout.strip() or None


def _top(root: Path) -> Path:
    return Path(_git(root, "rev-parse", "--show-toplevel").stdout.strip())


git, toplevel = _git, _top  # for graph.changed


def changed_paths(root: Path, ref: str) -> set[Path]:
    """Absolute paths that differ between `ref` and the working tree, plus untracked files."""
    top = _top(root)
    _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{tree}}")  # a commit, or the
    # empty tree 4b825dc6... that CI names for "everything changed" on a branch's first push
    diff = _git(top, "diff", "--name-only", "--no-renames", "-z", ref, "--").stdout
    untracked = _git(top, "ls-files", "--others", "--exclude-standard", "-z").stdout
    return {(top / p).resolve() for p in (diff + untracked).split("\0") if p}


def bundle_paths(bundle: Bundle) -> tuple[set[Path], tuple[Path, ...]]:
    """(files, directories) whose change means the bundle must be rebuilt."""
    files = {bundle.spec_path.resolve()}
    for plan in plan_bundle(bundle):
        files.update(p.resolve() for p in plan.inputs)
    dirs = (bundle.source.checkpoint.resolve(), bundle.source.tokenizer.resolve())
    return files, dirs


def ancestors(root: Path, ref: str, count: int = ANCESTORS) -> list[str]:
    """`ref`'s commit and its first-parent ancestors, newest first ([] when git cannot say)."""
    done = _git(root, "rev-list", "--first-parent", f"--max-count={count}", ref, "--",
                check=False)
    return done.stdout.split() if done.returncode == 0 else []


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def spec_changes(bundle: Bundle, ref: str) -> tuple[list[str] | None, str | None]:
    """(["key: old -> new", ...], base version) of the bundle's spec against `ref`.

    (None, None) when git cannot answer; (["new bundle"], None) when the spec is new."""
    from ..spec import load_document

    try:
        top = _top(bundle.root)
        rel = bundle.spec_path.resolve().relative_to(top).as_posix()
    except (KilnError, ValueError):
        return None, None
    shown = _git(top, "show", f"{ref}:{rel}", check=False)
    if shown.returncode:
        return ["new bundle (no spec at the base)"], None
    with tempfile.TemporaryDirectory(prefix="kiln-base-") as tmp:
        path = Path(tmp) / bundle.spec_path.name
        path.write_text(shown.stdout)
        try:
            old = _flatten(load_document(path).data)
        except KilnError:
            return ["the base spec does not load"], None
    new = _flatten(load_document(bundle.spec_path).data)
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            lines.append(f"{code(key, table=False)}: {text(_show(old.get(key)))} → "
                         f"{text(_show(new.get(key)))}")  # spec text: escaped for Markdown
    version = old.get("version")
    return lines, str(version) if version is not None else None


def _show(value: Any) -> str:
    return "absent" if value is None else json.dumps(value)
