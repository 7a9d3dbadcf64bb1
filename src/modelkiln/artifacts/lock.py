"""The one file lock: an exclusive `fcntl.flock`, re-entrant per thread, with an optional timeout.

Used by the model store (one writer per agent), the registry (one writer of the discovered layer)
and the runtime bootstrap (one install per runtime directory). Why flock and not a lock library:
flock is dropped by the kernel when its holder dies, so a SIGKILLed writer never leaves anything
locked and no stale-lock cleanup is needed; `filelock` offers the same call but not the holder
note below, and the runtime must stay importable without third-party packages.

Re-entrancy: flock conflicts even between two descriptors of one process, so a thread that already
holds a lock (say, publish holding the store lock while the store stages a version) must not open
the file again. Holds are therefore counted per (lock file, thread) in this process; a second
thread opens its own descriptor and queues in the kernel like another process would.

A lock file that is not a regular file (a FIFO, a device, a directory, a symlink: something put
there by hand or by accident) is refused with one clear error, never opened for writing: the
holder's note below truncates the file, and through a symlink that would be someone else's file.

Who holds it: the holder writes one line (pid, host, command, start time) into the lock file after
it gets the lock, so a caller that has to wait (`on_wait`) or gives up after `timeout` can say what
it waited for. The note is advisory text only; the lock itself is the flock.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import KilnError
from .statefile import read_regular


class LockTimeout(KilnError):
    """Another process held the lock for longer than the caller was willing to wait."""

    def __init__(self, path: Path, waited: float, holder: str):
        self.path, self.waited, self.holder = path, waited, holder
        super().__init__(f"{path}: still locked after {waited:.0f} s by {holder or 'another process'}"
                         "; wait for it to finish, or stop it if it is stuck (the lock is released "
                         "when its holder exits)")


_held: dict[tuple[str, int], tuple[int, int]] = {}  # (path, thread) -> (fd, depth)
_table = threading.Lock()


def _key(path: Path) -> tuple[str, int]:
    return (os.path.abspath(path), threading.get_ident())


def _note() -> bytes:
    cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:4]))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    host = os.uname().nodename
    return f"pid {os.getpid()} on {host} ({cmd or 'python'}) since {stamp}\n".encode()


def holder(path: Path) -> str:
    """The note the current holder wrote ("" when unreadable, empty or not a regular file)."""
    return (read_regular(path, 1 << 16) or b"")[:300].decode(errors="replace").strip()


_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def _open(path: Path) -> int:
    """A descriptor of the lock file, created if absent; KilnError when it is not a regular file
    (O_NONBLOCK: opening a FIFO or a device must not wait; flock ignores the flag)."""
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o664)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
        fd = -1
    if fd >= 0 and stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    if fd >= 0:
        os.close(fd)
    raise KilnError(f"{path}: this lock file is not a regular file (a symlink, FIFO, device or "
                    "directory); remove it (locks are re-created as needed) and run again")


def _reenter(key: tuple[str, int]) -> bool:
    """Count one more hold when this thread already holds the lock (True), else False."""
    with _table:
        if key not in _held:
            return False
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        return True


class FileLock:
    """`with FileLock(path).held(): ...` holds an exclusive flock on `path` (created 0664 under
    the umask, so writers sharing a group can all take it). `on_wait`, when given, is told the
    holder's note once, when the lock is taken and this call has to wait for it."""

    def __init__(self, path: Path | str, *, timeout: float | None = None,
                 on_wait: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.timeout = timeout
        self.on_wait = on_wait

    def acquire(self) -> None:
        key = _key(self.path)
        if _reenter(key):
            return
        fd = _open(self.path)
        try:
            self._wait(fd)
            with contextlib.suppress(OSError):  # the note is best effort (a full disk, say)
                os.ftruncate(fd, 0)
                os.pwrite(fd, _note(), 0)
        except BaseException:
            os.close(fd)
            raise
        with _table:
            _held[key] = (fd, 1)

    def _wait(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if self.on_wait is not None:
                self.on_wait(holder(self.path))
        if self.timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        start = time.monotonic()
        pause = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                waited = time.monotonic() - start
                if waited >= self.timeout:
                    raise LockTimeout(self.path, waited, holder(self.path)) from None
                time.sleep(min(pause, max(0.0, self.timeout - waited)))
                pause = min(pause * 2, 0.5)

    def try_acquire(self) -> bool:
        """Take the lock only if nobody else holds it; True when taken (release it after)."""
        key = _key(self.path)
        if _reenter(key):
            return True
        fd = _open(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        with _table:
            _held[key] = (fd, 1)
        return True

    def release(self) -> None:
        key = _key(self.path)
        with _table:
            if key not in _held:
                return
            fd, depth = _held.pop(key)
            if depth > 1:
                _held[key] = (fd, depth - 1)
                return
        os.close(fd)  # closing the last descriptor drops the flock

    @property
    def is_held(self) -> bool:
        """True when this thread holds the lock."""
        with _table:
            return _key(self.path) in _held

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


def _after_fork_in_child() -> None:
    """A forked child shares the parent's lock descriptors; it closes its copies (the parent's
    flocks stay held by the parent) and starts with an empty table and a fresh table lock, so it
    neither believes it holds the parent's locks nor keeps them held after the parent lets go."""
    global _table
    _table = threading.Lock()
    for fd, _depth in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
