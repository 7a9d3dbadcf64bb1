"""Copying payload into a staging directory with the digests taken on the way (`ModelStore.copy_in`).

Why: `finalize` must know the sha256 of every staged file. If the caller copies with `cp` and
finalize then hashes, every byte is read twice and sha256 (slower than the copy) runs after it, so
sealing costs more than the copy itself. Copying through `copy_file` reads each byte once, hashes
it on a second thread while writing it, and fsyncs in the background; finalize then reuses those
digests (trust rule: `store_fs.hash_tree`) and is left with the manifest, fsyncs of clean files,
the rename and the swap.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from ..artifacts.copy import copy_file
from ..errors import StoreError
from . import manifest as sm
from .fs import StatKey, default_workers, scan, stat_key

Copied = dict[str, tuple[StatKey, int, str]]  # staging relpath -> (stat key, size, sha256)


def check_rel(rel: str) -> str:
    """`rel` as a clean relative POSIX path inside the staging directory ("" for its root)."""
    if rel in ("", "."):
        return ""
    parts = PurePosixPath(rel).parts
    if rel.startswith("/") or "\\" in rel or any(p in (".", "..") for p in rel.split("/")):
        raise StoreError(f"bad destination {rel!r} for copy_in: use a plain relative path inside "
                         "the staging directory (no '..', no leading '/')")
    return "/".join(parts)


def copy_into(staging: Path, src: Path, rel: str, *, durable: bool = True,
              workers: int | None = None) -> Copied:
    """Copy the file or directory tree `src` to `staging/rel`, hashing every byte as it is copied.

    A file lands at `staging/rel` (`rel` "" means `staging/<src name>`); a directory's contents
    land under `staging/rel`, like `cp -r src/. staging/rel`. The top-level `src` is followed if it
    is a symlink; inside a tree, symlinks and special files are refused before anything is copied
    (a version holds only regular files and directories). Existing names are never overwritten.
    Files are copied largest first, several at a time (each copy also keeps a hashing thread busy).
    """
    rel = check_rel(rel)
    src = Path(src)
    if src.is_dir():
        tree = scan(src)
        if tree.odd:
            bad, kind = min(tree.odd.items())
            raise StoreError(f"{src / bad}: is a {kind}; a version holds only regular files and "
                             "directories (copy the target's bytes instead)")
        jobs = {_join(rel, f): (src / f, st.st_size) for f, st in tree.files.items()}
        dirs = [_join(rel, d) for d in tree.dirs] + ([rel] if rel else [])
    elif src.is_file():
        target = rel or src.name
        jobs, dirs = {target: (src, 0)}, [str(PurePosixPath(target).parent)]
    else:
        raise StoreError(f"{src}: no such file or directory to copy into the staging directory")
    if sm.MANIFEST in jobs:
        raise StoreError(f"{staging / sm.MANIFEST}: this name is the store's own manifest; put the "
                         "payload in a subdirectory (publish_to_store uses bundle/)")
    for d in sorted(set(dirs), key=len):
        (staging / d).mkdir(parents=True, exist_ok=True)

    def one(r: str) -> tuple[str, tuple[StatKey, int, str]]:
        dst = staging / r
        try:
            size, digest = copy_file(jobs[r][0], dst, durable=durable)
        except FileExistsError:
            raise StoreError(f"{dst}: already in the staging directory; copy_in never overwrites "
                             "(copy each file once)") from None
        return r, (stat_key(os.stat(dst)), size, digest)

    order = sorted(jobs, key=lambda r: -jobs[r][1])
    n = min(workers or default_workers(), len(order))
    if n <= 1:
        return dict(map(one, order))
    with ThreadPoolExecutor(n, "kiln-copy") as pool:
        return dict(pool.map(one, order))


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name
