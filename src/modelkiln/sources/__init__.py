"""Where a checkpoint lives: pinned remote sources, the lock beside the spec, and the fetch cache.

A spec's `source.checkpoint`, `source.tokenizer` and `thresholds.calibration` may name a remote
place (`s3://`, `oci://HOST/REPO@sha256:...`, `hf://ORG/REPO@COMMIT`) instead of a path. `kiln lock`
resolves each to an immutable reference and every file's path, size and sha256, and writes them to
`bundles/<name>.lock` (`lockfile`). From then on everything before a stage runs (validate, plan,
no-op, `kiln changed`) reads only the lock: the remote files have a fixed local place in the fetch
cache (`cache.FetchCache.tree_dir`) and their digests are the lock's (`pins`). A stage that reads
them fetches the files it needs first (`ensure_inputs`), hashing as they stream, and refuses any
byte that differs.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import DriftError
from . import pins
from .fetch import ensure
from .lockfile import LockEntry

DRIFT_MARK = "source-drift"  # in the project's state dir: `kiln build` exits 2 when a task left it


def ensure_inputs(paths: Iterable[Path], log: Callable[[str], None] | None = None,
                  state: Path | None = None) -> int:
    """Fetch the registered remote files among a task's input paths (nothing for local ones);
    the bytes moved. Called by the graph right before a stage runs, never by plan or no-op.
    On drift, a mark is left in `state` so the command that ran the graph (in whichever process)
    can tell drift from doit's other exit 2, a crashed action (graph.execute returns the drift to
    doit as its TaskError, exit 2)."""
    paths = list(paths)
    wanted = pins.entries_of(paths)
    if not wanted:
        return 0
    try:
        return ensure(_entries(paths).values(), wanted, log)
    except DriftError:
        if state is not None:
            state.mkdir(parents=True, exist_ok=True)
            (state / DRIFT_MARK).touch()
        raise


def drifted(state: Path, clear: bool = False) -> bool:
    """Whether a task of the last graph run stopped on source drift (`clear`: forget it first)."""
    mark = state / DRIFT_MARK
    if clear:
        mark.unlink(missing_ok=True)
        return False
    return mark.exists()


def _entries(paths: Iterable[Path]) -> dict[str, LockEntry]:
    out = {}
    for p in paths:
        hit = pins.find(p)
        if hit:
            out[hit[0].uri] = hit[0]
    return out


__all__ = ["DRIFT_MARK", "drifted", "ensure_inputs", "pins"]
