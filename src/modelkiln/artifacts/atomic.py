"""Atomic writes: content goes to a temporary name beside the target, is fsynced, then renamed.

A reader (or a process that survives a crash) sees either the old file or the new one, never a
torn one. Directories are fsynced after a rename so the rename itself survives power loss.

`mkstemp` creates files 0600; serving processes usually run under another uid, so every file
written here gets the ordinary mode a plain `open()` would give (0666 minus the umask) before it
is renamed into place.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def fsync_path(path: Path, directory: bool = False) -> None:
    """fsync a file (its bytes) or a directory (the names in it: renames, creations)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory so the names in it (renames, creations) are durable."""
    fsync_path(path, directory=True)


def umask() -> int:
    """The process umask, read without changing it where Linux allows (threads may be writing)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: the classic set-and-restore (a brief process-wide change)
    os.umask(mask)
    return mask


def readable_mode() -> int:
    """The mode `open(path, "w")` would create a file with: 0666 minus the umask."""
    return 0o666 & ~umask()


def new_temp(path: Path) -> tuple[int, Path]:
    """A fresh `.<name>.*.tmp` beside `path` (open fd, path) with ordinary read permissions."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, readable_mode())
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    return fd, Path(name)


def write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Replace `path` with `data` atomically (temp file + fsync + rename + fsync of the directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `final`; on success swap it in for `final`.

    An existing `final` is moved aside first and removed after the swap, so at every instant the
    path holds either the complete old directory, nothing, or the complete new one.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700; readers of dist/ and the store need more
    try:
        yield tmp
        old = None
        if final.exists() or final.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old / "d")
        os.replace(tmp, final)
        fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_symlink(link: Path, target: str, durable: bool = True) -> str | None:
    """Point the symlink `link` at `target` atomically; return what it pointed at before.

    A fresh symlink `.<name>.<pid>.<random>.tmp` beside `link` is renamed over it (os.replace), so
    a reader resolves either the old target or the new one, never nothing. Nothing is written
    when `link` already points at `target`. OSError (for example `link` is a real directory)
    propagates after the temporary link is removed; the caller words the fix.
    """
    try:
        previous: str | None = os.readlink(link)
    except OSError:
        previous = None
    if previous == target:
        return previous
    tmp = link.parent / f".{link.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(link.parent)
    return previous


def sweep_leftovers(final: Path) -> None:
    """Remove the `.<name>.*.tmp` / `.old` debris a killed writer of `final` left beside it.

    Only debris of this one target is touched: other writers may be staging siblings right now.
    """
    directory = final.parent
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name.startswith(f".{final.name}.") and entry.name.endswith((".tmp", ".old")):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
