"""Reading the model store: resolve `current`, list versions, verify bytes. No writes, no locks.

Readers never take the agent lock: every name they can see (`current`, `versions/<v>`) is only
ever created by an atomic rename of something complete, and versions are immutable. `StoreReader`
is what a serving process needs; `ModelStore` (store.py) adds the writers.

`STRICT_MODEL_STORE=1` turns "nothing there" (no store root, no agent, no current version, an
unreadable root) into a StoreError, so a production agent fails loudly instead of silently falling
back to some other source of weights. A damaged store (a `current` that names nothing complete, an
alias pointing outside the root) is an error in both modes: that is not "nothing there".
"""
from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DriftError, FileChange, StoreError
from . import manifest as sm
from .fs import CannotRead, diff, hash_tree, os_errors, scan


def strict_from_env() -> bool:
    """STRICT_MODEL_STORE=1 (or true/yes): a missing or unreadable store is an error, not "empty"."""
    return os.environ.get("STRICT_MODEL_STORE", "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class VersionInfo:
    """One version as `list_versions`, `finalize`, `rollback` and `verify` report it."""

    agent: str
    version: str
    path: Path
    checksum: str | None
    seq: int | None
    size: int = 0
    files: int = 0
    current: bool = False
    pinned: bool = False
    noop: bool = False  # finalize only: the same bytes were already there
    metadata: Mapping[str, Any] = field(default_factory=dict)
    bundle: sm.BundleRecord | None = None
    problem: str | None = None  # set when the manifest cannot be read


class StoreReader:
    """Resolve, list and verify versions under one store root (read-only)."""

    def __init__(self, root: Path | str | None = None, *, strict: bool | None = None,
                 workers: int | None = None):
        if root is None:
            root = os.environ.get("MODEL_STORE_ROOT") or None
        if root is None:
            raise StoreError("no model store root: set MODEL_STORE_ROOT (for example /srv/models) "
                             "or pass the root explicitly")
        self.root = Path(root)
        self.strict = strict_from_env() if strict is None else strict
        self.workers = workers

    def _unavailable(self, what: str) -> None:
        if self.strict:
            raise StoreError(f"{what}; STRICT_MODEL_STORE=1 makes this an error: point "
                             "MODEL_STORE_ROOT at a readable store, or unset STRICT_MODEL_STORE")

    def _agent_read(self, agent: str) -> Path | None:
        """The agent's real directory (aliases followed), or None when there is nothing there."""
        sm.check_name("agent", agent)
        path = self.root / agent
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            root_ok = self.root.is_dir()
            self._unavailable(f"no agent {agent!r} in model store {self.root}" if root_ok else
                              f"model store {self.root} does not exist or is not a directory")
            return None
        except OSError as exc:
            self._unavailable(f"model store {self.root} is unreadable ({exc.strerror})")
            return None
        if stat.S_ISLNK(st.st_mode):
            try:
                real = path.resolve(strict=True)
            except (OSError, RuntimeError):
                raise StoreError(f"{path}: legacy alias is dangling; remove it or point it at an "
                                 "agent directory") from None
            if real.parent != self.root.resolve() or not real.is_dir():
                raise StoreError(f"{path}: legacy alias points outside the store ({real}); aliases "
                                 f"must name a sibling agent directory")
            return real
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(f"{path}: not a directory; the store expects <agent>/versions/...")
        return path

    def get_current(self, agent: str) -> Path | None:
        """Directory of the agent's current version, or None when there is none (non-strict).

        The returned path names the version itself (`.../versions/<v>`), not `current`, so a
        reader that loads several files from it is not split across a concurrent swap.
        """
        adir = self._agent_read(agent)
        return None if adir is None else self._current_dir(adir, agent)

    def _current_name(self, adir: Path, agent: str) -> str | None:
        """The version `current` names (not checked for completeness), or None if there is none."""
        link = adir / "current"
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            self._unavailable(f"agent {agent!r} has no current version in {self.root}")
            return None
        except OSError:
            raise StoreError(f"{link}: is not a symlink; move it away and run "
                             f"`kiln store rollback {agent} VERSION`") from None
        parts = target.split("/")
        if len(parts) != 2 or parts[0] != "versions" or not parts[1]:
            raise StoreError(f"{link} -> {target}: not a store version; run "
                             f"`kiln store rollback {agent} VERSION` (see `kiln store list {agent}`)")
        return parts[1]

    def _current_dir(self, adir: Path, agent: str) -> Path | None:
        version = self._current_name(adir, agent)
        if version is None:
            return None
        path = adir / "versions" / version
        if path.is_symlink():
            raise StoreError(f"{adir / 'current'} -> versions/{version}: is a symlink, not a "
                             f"version the store wrote; run `kiln store repair {agent} {version}`")
        if not (path / sm.MANIFEST).is_file():
            raise StoreError(f"{adir / 'current'} -> versions/{version}: not a complete version; "
                             f"run `kiln store rollback {agent} VERSION` (see `kiln store list "
                             f"{agent}`)")
        return path

    def current_version(self, agent: str) -> str | None:
        """Name of the agent's current version, or None."""
        path = self.get_current(agent)
        return None if path is None else path.name

    def agents(self) -> dict[str, str | None]:
        """Agent names in the store, each mapped to the agent it aliases (None for real agents)."""
        if not self.root.is_dir():
            self._unavailable(f"model store {self.root} does not exist or is not a directory")
            return {}
        out: dict[str, str | None] = {}
        with os_errors(self.root, CannotRead):
            entries = sorted(self.root.iterdir())
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_symlink():
                out[entry.name] = Path(os.readlink(entry)).name
            elif entry.is_dir():
                out[entry.name] = None
        return out

    def list_versions(self, agent: str) -> list[VersionInfo]:
        """Every complete (or damaged) version of an agent, oldest first by finalize order."""
        adir = self._agent_read(agent)
        if adir is None:
            return []
        current = None
        with contextlib.suppress(StoreError):
            path = self._current_dir(adir, agent)
            current = path.name if path else None
        with os_errors(adir, CannotRead):
            return self._scan_versions(adir, agent, current)

    def _scan_versions(self, adir: Path, agent: str, current: str | None = None) -> list[VersionInfo]:
        versions = adir / "versions"
        if not versions.is_dir():
            return []
        pinned = self.pinned_in(adir)
        out = []
        for entry in versions.iterdir():
            name = entry.name
            if name.startswith(".") or name.endswith(sm.STAGING_SUFFIX) or not entry.is_dir():
                continue
            out.append(self._info(adir, agent, name, current=name == current,
                                  pinned=name in pinned))
        return sorted(out, key=lambda i: (i.seq is None, i.seq or 0, i.version))

    def _info(self, adir: Path, agent: str, version: str, *, current: bool | None = None,
              pinned: bool | None = None, noop: bool = False) -> VersionInfo:
        path = adir / "versions" / version
        if path.is_symlink():
            return VersionInfo(agent, version, path, None, None, current=bool(current),
                               pinned=bool(pinned), problem=f"{path}: is a symlink; a version is "
                               f"a real directory (`kiln store repair {agent} {version}`)")
        if current is None:
            with contextlib.suppress(StoreError):
                current = (self._current_dir(adir, agent) or Path()).name == version
        if pinned is None:
            pinned = version in self.pinned_in(adir)
        try:
            m = sm.read(path)
        except StoreError as exc:
            return VersionInfo(agent, version, path, None, None, current=bool(current),
                               pinned=pinned, problem=str(exc))
        return VersionInfo(agent, version, path, m.checksum, m.seq, size=m.size,
                           files=len(m.files), current=bool(current), pinned=pinned, noop=noop,
                           metadata=m.metadata, bundle=m.bundle)

    @staticmethod
    def pinned_in(adir: Path) -> set[str]:
        """Versions with a pin marker (`<agent>/pins/<version>`): prune leaves them alone."""
        pins = adir / "pins"
        return {p.name for p in pins.iterdir() if not p.name.startswith(".")} if pins.is_dir() else set()

    def verify(self, agent: str, version: str | None = None) -> VersionInfo:
        """Re-read and hash every byte of a version (default: current); DriftError on any change.

        What it proves: the version is byte for byte what the store sealed at finalize (the
        manifest's seal and name, then every file: changed, missing and added files, and anything
        that is not a regular file, such as a symlink in place of a file or of the version
        directory itself). It does not know what the registry expects; `kiln registry verify`
        checks the same bytes against the hash the registry recorded or locked. A file this
        process may not read is a StoreError (exit 1, "cannot read"), never drift.
        """
        adir = self._agent_read(agent)
        if adir is None:
            raise StoreError(f"no agent {agent!r} in model store {self.root}; see `kiln store list`")
        with os_errors(adir, CannotRead):
            return self._verify(adir, agent, version)

    def _verify(self, adir: Path, agent: str, version: str | None) -> VersionInfo:
        if version is None:
            version = self._current_name(adir, agent)  # an incomplete current is drift, below
            if version is None:
                raise StoreError(f"{agent}: no current version to verify; name one")
        sm.check_name("version", version)
        vdir = adir / "versions" / version
        name = f"{agent}/{version}"
        fix = (f"restore it: `kiln store repair {agent} {version}` (from the tarball it was "
               "published from); if the change is intended, publish it as a new version")
        if vdir.is_symlink():
            raise DriftError(name, [FileChange(".", "changed", "directory",
                                               f"symlink to {os.readlink(vdir)}")], fix=fix)
        if not vdir.is_dir():
            raise StoreError(f"{agent}: no version {version!r}; see `kiln store list {agent}`")
        try:
            manifest = sm.read(vdir)
        except CannotRead:
            raise
        except StoreError as exc:
            mpath = vdir / sm.MANIFEST
            kind = "missing" if not (mpath.exists() or mpath.is_symlink()) else "changed"
            raise DriftError(name, [FileChange(sm.MANIFEST, kind, None, str(exc))], fix=fix) from None
        tree = scan(vdir, exclude=frozenset({sm.MANIFEST}))
        actual = hash_tree(vdir, tree, workers=self.workers)
        changes = manifest.problems(version) + diff(manifest.files, actual, tree.odd)
        actual_sum = sm.checksum(actual)
        if changes or actual_sum != manifest.checksum:
            raise DriftError(name, changes, manifest.checksum, actual_sum, fix=fix)
        return self._info(adir, agent, version)
