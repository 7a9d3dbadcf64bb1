"""One writer per task output at a time, across every build running in the project.

Two `doit build` / `kiln build` runs in one project used to race: each starts a task by sweeping
the debris of killed writers beside the task's output, and so deleted the other run's staging
directory under it. Now a task runs only while holding an exclusive `flock` on
`.kiln/locks/<task>.lock`: a second run waits (saying which process holds it and since when), then
re-checks the stamp and finds the task already built. Different tasks still run in parallel, so
two builds of different bundles do not serialise. flock is released by the kernel when its holder
dies, so a killed build never leaves a task locked.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def lock_path(state: Path, task: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in task)
    return state / "locks" / f"{safe}.lock"


def _holder(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw) if raw else {}
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another build"
    since = time.strftime("%H:%M:%S", time.localtime(float(info.get("since", 0))))
    return f"pid {info['pid']} on {info.get('host', '?')} ({info.get('cmd', '?')}, since {since})"


@contextlib.contextmanager
def task_lock(state: Path, task: str, log: Callable[[str], None]) -> Iterator[None]:
    """Hold the task's lock for the block; wait (and say for whom) when another run holds it."""
    path = lock_path(state, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"{task}: waiting: {_holder(fd)} is building it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "cmd": " ".join(os.path.basename(a) for a in sys.argv[:3]), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # drops the flock
