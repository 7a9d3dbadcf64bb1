"""The one file lock (artifacts/lock.py): exclusive across processes and threads, re-entrant within a
thread, released by the kernel when its holder dies, and a timeout that names the holder."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from modelkiln.artifacts.lock import FileLock, LockTimeout


def _hold_in_child(path: Path) -> tuple[int, int]:
    """Fork a child that takes the lock, reports it, then sleeps; (pid, read end of its pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        FileLock(path).acquire()
        os.write(w, b"x")
        time.sleep(60)
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"x"
    return pid, r


def test_timeout_names_the_holder_and_a_dead_holder_frees_the_lock(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    pid, r = _hold_in_child(path)
    try:
        with pytest.raises(LockTimeout) as err:
            FileLock(path, timeout=0.2).acquire()
        assert f"pid {pid}" in str(err.value) and err.value.exit_code == 1
        assert not FileLock(path).try_acquire()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
    lock = FileLock(path, timeout=5)
    with lock.held():  # SIGKILL released it: no stale lock to clean up
        assert lock.is_held


def test_reentrant_in_a_thread_exclusive_between_threads(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    lock = FileLock(path)
    order: list[str] = []
    with lock.held():
        with FileLock(path).held():  # another object, same thread: re-entrant
            order.append("inner")

        def other() -> None:
            with FileLock(path).held():
                order.append("other")

        t = threading.Thread(target=other)
        t.start()
        t.join(0.3)
        assert t.is_alive()  # still waiting: the outer hold is not over
        order.append("outer-end")
    t.join(10)
    assert order == ["inner", "outer-end", "other"]
    assert not lock.is_held


def test_forked_child_does_not_inherit_the_hold(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    with FileLock(path).held():
        pid = os.fork()
        if pid == 0:
            os._exit(0 if not FileLock(path).try_acquire() else 1)
        _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0  # the child saw the parent's lock as someone else's
    again = FileLock(path)
    assert again.try_acquire()
    again.release()


def test_on_wait_is_told_the_holder_once_then_the_lock_is_taken(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    told: list[str] = []
    with FileLock(path, on_wait=told.append).held():  # free: nothing to wait for
        assert told == []
    pid, r = _hold_in_child(path)
    try:
        with pytest.raises(LockTimeout):
            FileLock(path, timeout=0.2, on_wait=told.append).acquire()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
    assert len(told) == 1 and told[0].startswith(f"pid {pid} on ")
    with FileLock(path, on_wait=told.append).held():
        assert len(told) == 1  # the holder died: taken without waiting
