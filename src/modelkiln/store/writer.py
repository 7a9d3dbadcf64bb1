"""Writing the model store: `MODEL_STORE_ROOT/<agent>/versions/<version>/` plus `current`.

Layout (one filesystem, so every rename is atomic):

    <agent>/.lock                  flock: one writer per agent at a time (held stage_new -> finalize)
    <agent>/versions/<v>.tmp/      staging, private to the lock holder
    <agent>/versions/<v>/          complete, immutable versions; manifest.json is written last
    <agent>/versions/.<v>.repair/  a repaired copy being checked before it is swapped in
    <agent>/current -> versions/<v>   swapped with os.replace of a fresh temporary symlink
    <agent>/pins/<v>               "do not prune" markers (the registry's version locks write them)
    <agent>/.pending               journal: "make <v> current" between the rename and the swap

Commit order: fsync every staged file and directory, write the sealed manifest, write `.pending`,
rename `<v>.tmp` -> `<v>`, fsync `versions/`, swap `current`, fsync, drop `.pending`. A reader
therefore only ever sees `current` name a complete version. After a crash the next locked
operation rolls `.pending` forward and sweeps staging and temporary debris, so re-running a publish
converges to what an uninterrupted run would have left. Legacy alias symlinks at the agent level
(for example `old-name -> new-name`) are followed for reads and refused for writes.

Every OS error (a full disk, a read-only or foreign-owned directory) leaves the store as it was
(staging is discarded, the lock released) and surfaces as one StoreError line naming the path and
the fix (`fs.os_error`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..artifacts.atomic import fsync_dir, swap_symlink, write_bytes
from ..artifacts.lock import FileLock
from ..errors import ConflictError, StoreError
from . import manifest as sm
from . import repair as _repair
from .fs import (
    DELETING_SUFFIX,
    Known,
    fsync_dirs,
    hash_tree,
    os_error,
    os_errors,
    remove_tree,
    scan,
)
from .reader import StoreReader, VersionInfo

__all__ = ["StoreWriter"]

_PENDING = ".pending"


class StoreWriter(StoreReader):
    """Stage and finalize versions under the agent lock, and finish what a killed writer left;
    `ModelStore` (maintain.py) adds rollback, prune, pin and repair on top."""

    def __init__(self, root: Path | str | None = None, *, strict: bool | None = None,
                 workers: int | None = None):
        super().__init__(root, strict=strict, workers=workers)
        self._staged: dict[tuple[Path, str], Path] = {}

    def _agent_write(self, agent: str) -> Path:
        """The agent's directory for writing, created on demand; aliases are read-only shims."""
        sm.check_name("agent", agent)
        path = self.root / agent
        if path.is_symlink():
            raise StoreError(f"{path}: is a legacy alias of {os.readlink(path)}; aliases are "
                             f"read-only, write to the canonical agent name instead")
        if self.strict and not self.root.is_dir():
            self._unavailable(f"model store {self.root} does not exist")
        with os_errors(path):
            (path / "versions").mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def _lock(adir: Path) -> FileLock:
        return FileLock(adir / ".lock")

    @contextlib.contextmanager
    def holding(self, agent: str) -> Iterator[Path]:
        """Hold the agent's writer lock for the block (re-entrant for this thread), after finishing
        what a killed writer left. Publish holds it from its no-op check until the registry has
        recorded the version, so a concurrent prune cannot remove a version in between."""
        adir = self._agent_write(agent)
        with os_errors(adir / ".lock"):
            self._lock(adir).acquire()
        try:
            with os_errors(adir):
                self._recover(adir)
            yield adir
        finally:
            self._lock(adir).release()

    # ----------------------------------------------------------------------------- writing
    @contextlib.contextmanager
    def stage_new(self, agent: str, version: str) -> Iterator[Path]:
        """Yield an empty `<version>.tmp` to fill; the agent lock stays held until `finalize`.

        A staging directory left by a killed writer is removed first (its contents are unknown).
        If the block raises, the staging is removed and the lock released; an OSError raised
        while filling it (a full disk) becomes a StoreError naming the path.
        """
        sm.check_name("version", version)
        adir = self._agent_write(agent)
        key = (adir, version)
        lock = self._lock(adir)
        with os_errors(adir / ".lock"):
            lock.acquire()
        try:
            if key in self._staged:
                raise StoreError(f"{agent}/{version} is already being staged by this process")
            tmp = adir / "versions" / f"{version}{sm.STAGING_SUFFIX}"
            with os_errors(tmp):
                self._recover(adir)
                if tmp.exists() or tmp.is_symlink():
                    remove_tree(tmp)
                tmp.mkdir()
            self._staged[key] = tmp
        except BaseException:
            lock.release()
            raise
        try:
            yield tmp
        except OSError as exc:
            self.discard(agent, version)
            raise os_error(exc, tmp) from None
        except BaseException:
            self.discard(agent, version)
            raise

    def discard(self, agent: str, version: str) -> None:
        """Drop a staged version without finalizing it and release the agent lock."""
        adir = self.root / agent
        tmp = self._staged.pop((adir, version), None)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            self._lock(adir).release()

    def finalize(self, agent: str, version: str, metadata: Mapping[str, Any] | None = None, *,
                 activate: bool = True, bundle: sm.BundleRecord | None = None,
                 known: Known | None = None) -> VersionInfo:
        """Seal the staged version, rename it into place and (with `activate`) make it current.

        Versions are immutable: if `<version>` exists with the same checksum this is a no-op
        (`noop=True`, `current` untouched); with a different checksum, ConflictError.
        `known` digests ({relpath: (stat key, sha256)}) spare re-reading those files under
        `fs.hash_tree`'s trust rule (stat key unchanged; a wrong one is caught by `verify`).
        Every file is still fsynced here.
        """
        adir = self._agent_write(agent)
        tmp = self._staged.pop((adir, version), None)
        if tmp is None:
            raise StoreError(f"{agent}/{version} is not staged in this process; write it inside "
                             f"`with store.stage_new({agent!r}, {version!r}) as tmp:` first")
        try:
            with os_errors(tmp):
                return self._commit(adir, agent, version, tmp, dict(metadata or {}), activate,
                                    bundle, known or {})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
            self._lock(adir).release()

    def _commit(self, adir: Path, agent: str, version: str, tmp: Path, metadata: dict[str, Any],
                activate: bool, bundle: sm.BundleRecord | None, known: Known) -> VersionInfo:
        tree = scan(tmp)
        if tree.odd:
            rel, kind = min(tree.odd.items())
            raise StoreError(f"{tmp / rel}: is a {kind}; a version holds only regular files and "
                             "directories (copy the target's bytes instead)")
        if sm.MANIFEST in tree.files:
            raise StoreError(f"{tmp / sm.MANIFEST}: this name is the store's own manifest; put the "
                             "payload in a subdirectory (publish_to_store uses bundle/)")
        digests = hash_tree(tmp, tree, known=known, fsync=True, workers=self.workers)
        final = adir / "versions" / version
        if final.exists() or final.is_symlink():
            existing = sm.read(final).checksum
            new = sm.checksum(digests)
            if existing != new:
                raise ConflictError(str(final), existing, new)
            return self._info(adir, agent, version, noop=True)
        manifest = sm.build(version, digests, metadata, self._next_seq(adir), bundle)
        write_bytes(tmp / sm.MANIFEST, sm.dumps(manifest))
        fsync_dirs(tmp, tree.files)
        if activate:
            write_bytes(adir / _PENDING, version.encode())
        os.rename(tmp, final)
        fsync_dir(final.parent)
        if activate:
            self._point_current(adir, version)
            os.unlink(adir / _PENDING)
            fsync_dir(adir)
        return self._info(adir, agent, version)

    def _next_seq(self, adir: Path) -> int:
        seqs = [info.seq for info in self._scan_versions(adir, "") if info.seq is not None]
        return max(seqs, default=0) + 1

    def _point_current(self, adir: Path, version: str) -> None:
        """Swap `current` to `versions/<version>`: a new symlink renamed over the old one."""
        try:
            swap_symlink(adir / "current", f"versions/{version}")
        except OSError as exc:
            raise StoreError(f"{adir / 'current'}: cannot replace ({exc.strerror}); it must be a "
                             "symlink: move it away and run `kiln store rollback`") from None

    def ensure_present(self, agent: str, version: str, archive_sha256: str, *,
                       check_bytes: bool = False) -> VersionInfo | None:
        """Under the agent lock: is `version` already published from the tarball `archive_sha256`?

        None when it is absent (or was finalized without a bundle record: `finalize` decides after
        unpacking). ConflictError when it came from another tarball. With `check_bytes` every byte
        is re-read as well: DriftError naming `kiln store repair` when the copy is damaged.
        The answer holds only while the lock is held: wrap this and whatever records the result
        in `holding(agent)` (publish does), or a concurrent prune may remove the version after.
        """
        with self.holding(agent) as adir:
            vdir = adir / "versions" / version
            if not (vdir / sm.MANIFEST).is_file():
                return None
            try:
                existing = sm.read(vdir)
            except StoreError:
                return None  # damaged: finalize reports it
            if existing.bundle is None:
                return None
            if existing.bundle.archive_sha256 != archive_sha256:
                raise ConflictError(str(vdir), existing.bundle.archive_sha256, archive_sha256)
            if check_bytes:
                self.verify(agent, version)
            return self._info(adir, agent, version, noop=True)

    def recover(self, agent: str) -> None:
        """Finish what a killed writer left (an interrupted `current` swap, staging debris)."""
        with self.holding(agent):
            pass

    def _recover(self, adir: Path) -> None:
        """Under the lock: finish an interrupted swap or repair, then sweep what killed writers
        left."""
        pending = adir / _PENDING
        if pending.exists():
            version = pending.read_text(errors="replace").strip()
            with contextlib.suppress(StoreError):
                sm.check_name("version", version)
                if (adir / "versions" / version / sm.MANIFEST).is_file():
                    self._point_current(adir, version)
            pending.unlink()
            fsync_dir(adir)
        _repair.recover(adir)
        ours = set(self._staged.values())
        for entry in (adir / "versions").iterdir():
            debris = entry.name.endswith(sm.STAGING_SUFFIX) or (
                entry.name.startswith(".") and entry.name.endswith(DELETING_SUFFIX))
            if not debris or entry in ours:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()
        for entry in adir.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                entry.unlink()
        pins = adir / "pins"
        if pins.is_dir():
            for entry in pins.iterdir():
                if entry.name.startswith("."):
                    entry.unlink()
