"""Up-to-date verdicts kept between runs, so a no-op re-checks a bundle with stats alone.

`state.status` decides from contents: it parses the task's stamp, looks up the digest of every
input, reads each upstream stamp's output aggregate and checks every output's digest. When every
task of a bundle is found up to date, the (device, inode, size, mtime_ns, ctime_ns) of every file
those checks read, each taken *before* the check that read it, is kept here (`.kiln/verdicts.json`)
with a digest of the bundle's plans. The next check of that bundle is a hit only when the plans are
the same and every one of those files still has that signature (an optional input that was absent
must still be absent): then each of its tasks is up to date without a stamp parsed or a digest looked
up. That is the trust the stat cache already puts in a signature, applied once per file. Anything
else is a miss, and every task of the bundle gets the full check.

A hit holds for the rest of the process: a task writes only its own outputs and stamp, and none of
a fresh bundle's tasks runs, so nothing this run does can change its files. A file modified (or
whose inode changed) in the last 100 ms is never vouched for (a second write within one timestamp
tick could repeat the stat). A bundle with an `engines` task gets no verdict (its plan depends on
the cache's engine index). Losing the file, a concurrent writer's entries, or a file that is
corrupt, of another shape or not a regular file (read as empty), costs time, never a wrong verdict.
"""
from __future__ import annotations

import atexit
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..artifacts.atomic import write_bytes
from ..artifacts.digest import RACY_NS, canonical_json, sha256_bytes
from ..artifacts.statefile import load_json
from ..stages.base import StagePlan
from ..stages.engines import STAGE as ENGINES

FORMAT = 2  # 2: signatures carry the ctime
Sig = list[int] | None  # [dev, inode, size, mtime_ns, ctime_ns], or None: absent
Files = list[tuple[str, Sig]]  # stored as JSON lists: [[path, sig], ...]


def signature(path: str) -> Sig:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # absent, or a parent is not a directory
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def plans_key(plans: Sequence[StagePlan], stamps: Mapping[str, Path]) -> str:
    """Everything about the plans that `status` reads, besides file contents."""
    parts: list[str] = []
    for plan in plans:
        parts += [plan.task, plan.params_digest, os.fspath(plan.stamp), os.fspath(plan.out_dir),
                  *map(os.fspath, plan.inputs), "", *plan.upstream, "",
                  *(os.fspath(stamps[t]) for t in plan.upstream), ""]
    return sha256_bytes("\0".join(parts).encode())  # NUL: in no path, task name or digest


class Verdicts:
    """bundle -> (digest of its plans, signatures of the files its up-to-date checks read)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._entries = self._read(path) if path is not None else {}
        self._forgotten: set[str] = set()
        self._dirty = False

    @staticmethod
    def _read(path: Path) -> dict[str, list[object]]:
        """The file's entries; none when it is corrupt, of another shape or not a regular file."""
        data = load_json(path)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return {}
        entries = data.get("bundles")
        return entries if isinstance(entries, dict) else {}

    def holds(self, bundle: str, key: str, root: str) -> bool:
        """The bundle's entry has this plans key and every file in it keeps its signature
        (paths are kept relative to the project root `root` where they are inside it)."""
        entry = self._entries.get(bundle)
        try:
            if entry is None or entry[0] != key:
                return False
            files = entry[1]
            assert isinstance(files, list)
            base = root + os.sep
            return all(signature(path if path.startswith(os.sep) else base + path) == sig
                       for path, sig in files)
        except (AssertionError, AttributeError, IndexError, TypeError, ValueError, OSError):
            return False

    def keep(self, bundle: str, key: str, files: Files) -> None:
        self._entries[bundle] = [key, files]
        self._forgotten.discard(bundle)
        self._dirty = True

    def forget(self, bundle: str) -> None:
        if self._entries.pop(bundle, None) is not None:
            self._forgotten.add(bundle)
            self._dirty = True

    def save(self) -> None:
        """Merge into the file on disk (a concurrent run's verdicts survive) and replace it."""
        if self.path is None or not self._dirty:
            return
        merged = {**self._read(self.path), **self._entries}
        for bundle in self._forgotten:  # a stale entry must not come back from the file
            merged.pop(bundle, None)
        root = os.fspath(self.path.parent.parent)  # <project>/.kiln/verdicts.json
        merged = {b: e for b, e in merged.items() if _first_file_there(e, root)}
        try:  # not durable: losing the file after a crash costs a full check, nothing more
            write_bytes(self.path, canonical_json({"format": FORMAT, "bundles": merged}),
                        durable=False)
        except OSError:
            return  # a read-only or full state dir only costs speed
        self._dirty = False


def _first_file_there(entry: list[object], root: str) -> bool:
    """Whether the first file an entry vouches for (its first task's stamp) still exists: a
    removed bundle's entry is dropped, so the file does not grow without bound."""
    try:
        files = entry[1]
        assert isinstance(files, list)
        path = files[0][0]
        return os.path.exists(path if path.startswith(os.sep) else os.path.join(root, path))
    except (AssertionError, IndexError, TypeError, AttributeError):
        return False


class BundleMemo:
    """One bundle's verdict for one process: shared by the up-to-date checks of its tasks."""

    def __init__(self, verdicts: Verdicts, bundle: str, root: Path, plans: Sequence[StagePlan],
                 stamps: Mapping[str, Path]):
        self.verdicts, self.bundle, self.root, self.stamps = verdicts, bundle, str(root), stamps
        self.plans = tuple(plans)
        self._held: bool | None = None
        self._passed: dict[str, Files] = {}
        self._missed = False

    @property
    def usable(self) -> bool:
        return all(p.stage != ENGINES for p in self.plans)

    def holds(self) -> bool:
        """Every task of the bundle is up to date (decided at the first call, see the module doc)."""
        if self._held is None:
            self._held = self.usable and self.verdicts.holds(
                self.bundle, plans_key(self.plans, self.stamps), self.root)
        return self._held

    def sign(self, plan: StagePlan, stamp_sig: Sig, outputs: list[str]) -> Files | None:
        """Signatures of every file the check of `plan` reads, or None when one was modified too
        recently to vouch for. `stamp_sig` was taken before the stamp was read; `outputs` are the
        output paths that stamp lists. Call it before the check reads any of the others."""
        if self._missed:
            return None
        now = time.time_ns()
        files: Files = [(os.fspath(plan.stamp), stamp_sig)]
        for path in [*map(os.fspath, plan.inputs),
                     *(os.fspath(self.stamps[t]) for t in plan.upstream), *outputs]:
            try:
                files.append((path, signature(path)))
            except OSError:
                return None
        if any(sig is not None and now - max(sig[3], sig[4]) <= RACY_NS for _, sig in files):
            return None
        return files

    def passed(self, plan: StagePlan, files: Files | None) -> None:
        """A full check found `plan` up to date after signing `files`; once every task of the
        bundle has, and their signatures agree, the bundle's verdict is kept."""
        if files is None or self._missed or not self.usable:
            self.missed()
            return
        self._passed[plan.task] = files
        if len(self._passed) < len(self.plans) or any(p.task not in self._passed for p in self.plans):
            return
        union: dict[str, Sig] = {}
        base = self.root + os.sep
        for task_files in self._passed.values():
            for path, sig in task_files:
                rel = path[len(base):] if path.startswith(base) else path
                if union.setdefault(rel, sig) != sig:  # changed between two checks
                    self.missed()
                    return
        self.verdicts.keep(self.bundle, plans_key(self.plans, self.stamps), list(union.items()))

    def missed(self) -> None:
        """Some task of the bundle is not up to date (or could not be vouched for)."""
        if not self._missed:
            self._missed = True
            self.verdicts.forget(self.bundle)


_OPEN: dict[Path, Verdicts] = {}


def verdicts(state_dir: Path) -> Verdicts:
    """The process-wide verdicts of a project (one per `.kiln/` directory), saved at exit."""
    if state_dir not in _OPEN:
        memo = _OPEN[state_dir] = Verdicts(state_dir / "verdicts.json")
        atexit.register(memo.save)
    return _OPEN[state_dir]
