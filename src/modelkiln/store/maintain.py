"""Maintaining the model store: roll `current` back, prune old versions, pin, repair.

Each operation holds the agent's writer lock (`StoreWriter.holding`, which first finishes what a
killed writer left) and changes `current` only through the same symlink swap as a publish, so a
reader never sees a half-done operation.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ..artifacts.atomic import fsync_dir, write_bytes
from ..errors import DriftError, StoreError
from . import manifest as sm
from .fs import os_errors, remove_tree
from .reader import VersionInfo
from .repair import restore
from .writer import StoreWriter

__all__ = ["ModelStore"]

Protect = Iterable[str] | Callable[[], Iterable[str]]


class ModelStore(StoreWriter):
    """Stage, finalize, roll back, prune, pin and repair versions; everything StoreReader reads."""

    def _current_or_none(self, adir: Path, agent: str) -> Path | None:
        """The current version, or None when it is missing or broken (rollback is the repair)."""
        try:
            return self._current_dir(adir, agent)
        except StoreError:
            return None

    def rollback(self, agent: str, version: str | None = None, *, verify: bool = True) -> VersionInfo:
        """Point `current` at `version` (default: the one finalized just before the current one).

        The target is verified first (bytes re-read) so a rollback never lands on a drifted copy.
        """
        with self.holding(agent) as adir, os_errors(adir):
            cur = self._current_or_none(adir, agent)
            infos = [i for i in self._scan_versions(adir, agent) if i.seq is not None]
            if version is None:
                cur_seq = next((i.seq for i in infos if cur and i.version == cur.name), None)
                earlier = [i for i in infos if cur_seq is not None and (i.seq or 0) < cur_seq]
                if not earlier:
                    raise StoreError(f"{agent}: no version older than the current one; name the "
                                     f"target: `kiln store rollback {agent} VERSION`")
                version = earlier[-1].version
            sm.check_name("version", version)
            if version not in {i.version for i in infos}:
                raise StoreError(f"{agent}: no complete version {version!r}; see "
                                 f"`kiln store list {agent}`")
            if verify:
                self.verify(agent, version)
            self._point_current(adir, version)
            return self._info(adir, agent, version, current=True)

    def prune(self, agent: str, keep: int = 3, *, protect: Protect = ()) -> list[str]:
        """Remove all but the `keep` newest versions; never the current, a pinned or a protected
        one, nor a damaged one (it is reported by `list_versions` for a human to look at).

        `protect` may be a callable: it is then asked under the agent lock, so what it reads (the
        registry, say) cannot change between the answer and the removal.
        """
        if keep < 0:
            raise StoreError(f"keep must be 0 or more, got {keep}")
        removed = []
        with self.holding(agent) as adir, os_errors(adir):
            path = self._current_or_none(adir, agent)
            infos = [i for i in self._scan_versions(adir, agent) if i.seq is not None]
            spare = {i.version for i in infos[-keep:]} if keep else set()
            spare |= set(protect() if callable(protect) else protect)
            spare |= self.pinned_in(adir) | ({path.name} if path else set())
            for info in infos:
                if info.version not in spare:
                    remove_tree(info.path)
                    removed.append(info.version)
        return removed

    def pin(self, agent: str, version: str, reason: str = "") -> None:
        """Protect a version from `prune` (the registry pins what it locks)."""
        sm.check_name("version", version)
        with self.holding(agent) as adir, os_errors(adir / "pins"):
            if not (adir / "versions" / version / sm.MANIFEST).is_file():
                raise StoreError(f"{agent}: no complete version {version!r} to pin")
            write_bytes(adir / "pins" / version, (reason + "\n").encode())

    def unpin(self, agent: str, version: str) -> None:
        """Let `prune` remove a version again."""
        sm.check_name("version", version)
        with self.holding(agent) as adir, os_errors(adir / "pins"), \
                contextlib.suppress(FileNotFoundError):
            os.unlink(adir / "pins" / version)
            fsync_dir(adir / "pins")

    def repair(self, agent: str, version: str | None, archive: Path) -> VersionInfo:
        """Restore a damaged version from the tarball it was published from (`archive`).

        The tarball's sha256 must equal the one the version's sealed manifest recorded, and the
        unpacked files must match the manifest exactly; only then is the repaired copy swapped in
        (atomically). `noop=True` when the version verified and nothing was changed.
        """
        with self.holding(agent) as adir:
            if version is None:
                version = self._current_name(adir, agent)
                if version is None:
                    raise StoreError(f"{agent}: no current version; name the one to repair")
            sm.check_name("version", version)
            try:
                self.verify(agent, version)
                return self._info(adir, agent, version, noop=True)
            except DriftError:
                pass
            with os_errors(adir / "versions" / version):
                restore(adir, version, Path(archive), self.workers)
            return self.verify(agent, version)
