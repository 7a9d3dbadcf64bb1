"""Stamps: the record of what each task last built from, and the up-to-date rule that reads them.

A stamp is written after a task's outputs are swapped into place (the marker comes last) and
removed before the task starts again, so a kill at any point leaves either no stamp (the task
reruns) or a stamp that describes the outputs on disk. Because the record lives beside the
artifacts, a killed `doit` run keeps every finished task done, whatever doit's own database saved.

A task is up to date when its stamp exists and
- its params digest (spec section + stage code version) is unchanged,
- every input file's content digest is unchanged (read through the stat cache),
- every upstream task's output aggregate is unchanged (early cutoff: an upstream rerun that
  produced identical bytes does not ripple down), and
- every output it recorded is still there with the recorded digest (a corrupt or truncated output
  is rebuilt, not trusted).
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from .. import sources
from ..artifacts.digest import StatCache, aggregate, settled
from ..artifacts.statefile import load_json
from ..errors import KilnError
from ..stages.base import StagePlan
from .verdicts import BundleMemo, Sig, signature

Stamp = dict[str, Any]


_STAMPS: dict[tuple[str, int, int, int, int], Stamp] = {}
# what `status`, `snapshot` and the stages read from a stamp, and the type each must have
_SHAPE = {"params_digest": str, "params": dict, "inputs": dict, "outputs": dict,
          "outputs_aggregate": str}


def read_stamp(path: Path) -> Stamp | None:
    """A stamp's content, or None when absent, unreadable, not a regular file or not a stamp
    (any of which means: rebuild). Treat it as read-only: a no-op reads each upstream stamp once
    per reader, so parsed stamps are kept while the file's (inode, size, mtime, ctime) stay the
    same (not for a stamp written in the last 100 ms, whose stat could repeat within one tick)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _STAMPS:
        return _STAMPS[key]
    data = load_json(path)
    if not _is_stamp(data):
        return None
    if settled(st, time.time_ns()):
        _STAMPS[key] = data
    return data


def drop_stamp(path: Path) -> None:
    """Remove a task's stamp before the task runs (so a kill leaves no stamp: a rerun);
    KilnError when something that cannot be unlinked, a directory, is in its place."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise KilnError(f"{path}: cannot remove the task's stamp ({exc.strerror or exc}); "
                        "remove what is there and run again") from None


def _is_stamp(data: object) -> TypeGuard[Stamp]:
    """Whether parsed JSON has a stamp's shape: the keys the checks read, of the right types,
    every input and output digest a string."""
    if not isinstance(data, dict):
        return False
    if not all(isinstance(data.get(k), t) for k, t in _SHAPE.items()):
        return False
    return all(isinstance(k, str) and isinstance(v, str)
               for part in (data["inputs"], data["outputs"]) for k, v in part.items())


# The installed modelkiln package (its runtime files are inputs of the serving image).
_PACKAGE = str(Path(__file__).resolve().parents[1])
PACKAGE_PREFIX = "modelkiln:"


def rel_to(path: Path, root: Path) -> str:
    """How stamps and cache keys name a file: modelkiln's own files by their path inside the
    package, wherever it is installed (one venv serving two clones has it inside one project
    and outside the other: a relative name in one, an absolute one in the other, so one image
    got two keys); a remote source's file by its URI and path (`source:URI#PATH`), wherever the
    fetch cache is (a moved cache or another runner's must neither rerun nor miss the task);
    other files relative to the project when inside it."""
    text, base = str(path), str(root)
    pinned = sources.pins.find(text)
    if pinned is not None:
        return f"source:{pinned[0].uri}#{pinned[1].path}"
    if text.startswith(_PACKAGE + os.sep):
        return PACKAGE_PREFIX + text[len(_PACKAGE) + 1:].replace(os.sep, "/")
    if text.startswith(base + os.sep):  # the common case, without pathlib's parsing
        return text[len(base) + 1:].replace(os.sep, "/")
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return text


def snapshot(plan: StagePlan, root: Path, cache: StatCache,
             stamps: Mapping[str, Path]) -> dict[str, str]:
    """Current digests of everything the task reads: input files and upstream output aggregates.

    An optional input that is absent (an unsigned bundle's signature) is recorded as "missing",
    as `status` reads it, so its later appearance reruns the task."""
    current = {rel_to(p, root): digest_or_missing(cache, p) for p in plan.inputs}
    for task in plan.upstream:
        stamp = read_stamp(stamps[task])
        current[f"@{task}"] = stamp["outputs_aggregate"] if stamp else "missing"
    return current


def digest_or_missing(cache: StatCache, path: Path | str) -> str:
    """An input's digest, or "missing" (what stamps and cache keys record for an absent one).
    A remote source's file has its locked digest, fetched or not (what is fetched is verified)."""
    pinned = sources.pins.digest(path)
    if pinned is not None:
        return pinned
    try:
        return cache.digest(path)
    except OSError:
        return "missing"


def walk_outputs(directory: Path) -> list[str]:
    """Every regular file under a task's output directory, as sorted POSIX relative paths."""
    out: list[str] = []
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            out.append(Path(dirpath, name).relative_to(directory).as_posix())
    return sorted(out)


def stamp_for(plan: StagePlan, inputs: Mapping[str, str], outputs: Mapping[str, str],
              report: Mapping[str, Any] | None) -> Stamp:
    return {
        "task": plan.task,
        "params_digest": plan.params_digest,
        "params": json.loads(plan.params),
        "inputs": dict(inputs),
        "outputs": dict(outputs),
        "outputs_aggregate": aggregate(outputs.items()),
        "report": dict(report or {}),
    }


@dataclass(frozen=True)
class Status:
    run: bool
    reasons: tuple[str, ...]


def _short(digest: str | None) -> str:
    return (digest or "none")[:12]


def status(plan: StagePlan, root: Path, cache: StatCache, stamps: Mapping[str, Path],
           pending: Iterable[str] = (), explain: bool = False,
           memo: BundleMemo | None = None) -> Status:
    """Whether `plan` must run, and why. Stops at the first reason unless `explain`. With `memo`
    (its bundle's), a bundle found up to date before whose files all keep their signatures is up
    to date without reading them (graph.verdicts), and full checks that find every task of the
    bundle up to date are remembered."""
    waiting = set(pending)
    if memo is not None and waiting.isdisjoint(plan.upstream) and memo.holds():
        return Status(False, ())
    stamp_sig = signature(os.fspath(plan.stamp)) if memo is not None else None  # before reading
    found = _check(plan, root, cache, stamps, waiting, explain, memo, stamp_sig)
    if memo is not None and found.run:
        memo.missed()
    return found


def _check(plan: StagePlan, root: Path, cache: StatCache, stamps: Mapping[str, Path],
           waiting: set[str], explain: bool, memo: BundleMemo | None, stamp_sig: Sig) -> Status:
    reasons: list[str] = []

    def why(text: str) -> bool:
        reasons.append(text)
        return not explain

    stamp = read_stamp(plan.stamp)
    if stamp is None:
        why("never built (no stamp)")
        return Status(True, tuple(reasons))
    out_dir = os.fspath(plan.out_dir)  # joined as text: a Path per output file costs more than its stat
    outputs = stamp.get("outputs", {})
    signed = memo.sign(plan, stamp_sig, [os.path.join(out_dir, rel) for rel in outputs]) \
        if memo is not None and isinstance(outputs, dict) else None
    if stamp.get("params_digest") != plan.params_digest:
        changed = _params_diff(stamp.get("params", {}), json.loads(plan.params))
        if why(f"spec changed: {changed} ({_short(stamp.get('params_digest'))} -> "
               f"{_short(plan.params_digest)})"):
            return Status(True, tuple(reasons))
    recorded = stamp.get("inputs", {})
    for task in plan.upstream:
        if task in waiting and why(f"upstream {task} will run"):
            return Status(True, tuple(reasons))
    for p in plan.inputs:
        key = rel_to(p, root)
        now = digest_or_missing(cache, os.fspath(p))
        if recorded.get(key) != now and why(f"input {key} changed "
                                            f"({_short(recorded.get(key))} -> {_short(now)})"):
            return Status(True, tuple(reasons))
    for task in plan.upstream:
        if task in waiting:
            continue
        up = read_stamp(stamps[task])
        now = up["outputs_aggregate"] if up else "missing"
        old = recorded.get(f"@{task}")
        if old != now and why(f"upstream {task} outputs changed ({_short(old)} -> {_short(now)})"):
            return Status(True, tuple(reasons))
    for rel, digest in outputs.items():
        now = digest_or_missing(cache, os.path.join(out_dir, rel))
        if now != digest and why(f"output {rel_to(plan.out_dir / rel, root)} is "
                                 f"{'missing' if now == 'missing' else 'corrupt'}"):
            return Status(True, tuple(reasons))
    if reasons:
        return Status(True, tuple(reasons))
    if memo is not None:
        memo.passed(plan, signed)
    return Status(False, ())


def _params_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(keys) if keys else "params"
