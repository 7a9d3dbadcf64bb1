"""One writer per task output at a time, across every build running in the project.

Two `doit build` / `kiln build` runs in one project used to race: each starts a task by sweeping
the debris of killed writers beside the task's output, and so deleted the other run's staging
directory under it. Now a task runs only while holding the project's `FileLock` on
`.kiln/locks/<task>.lock`: a second run waits (saying which process holds it and since when), then
re-checks the stamp and finds the task already built. Different tasks still run in parallel, so
two builds of different bundles do not serialise, and a killed build never leaves a task locked.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from ..artifacts.lock import FileLock
from ..errors import KilnError


def lock_path(state: Path, task: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in task)
    return state / "locks" / f"{safe}.lock"


@contextlib.contextmanager
def task_lock(state: Path, task: str, log: Callable[[str], None]) -> Iterator[None]:
    """Hold the task's lock for the block; wait (and say for whom) when another run holds it."""
    path = lock_path(state, task)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file (or a FIFO...) where the directory should be
        raise KilnError(f"{path.parent}: cannot use it as the directory of task locks "
                        f"({exc.strerror or exc}); remove what is there and run again") from None

    def waiting(holder: str) -> None:
        log(f"{task}: waiting: {holder or 'another build'} is building it")

    with FileLock(path, on_wait=waiting).held():
        yield
