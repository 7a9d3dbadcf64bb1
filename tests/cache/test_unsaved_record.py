"""A trusted writer killed after its stamp still gets its record saved (issue 19, item 9), and a
killed writer leaves no temp file in the cache.

The kill lands at an exact point: the real `doit` runs with the graph's save step replaced by a
SIGKILL for one task, which is the moment after that task's stamp is written and before its
record is. (A kill is a fault a real server cannot be asked for.) The next trusted run finds
the task up to date with its record missing and saves it without rebuilding; a fresh reader then
restores every task. The temp-file case kills a writer in the middle of copying a blob whose
source is a FIFO the test feeds, so the kill is always mid-copy.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from helpers import BIN, Project, make_project

pytestmark = pytest.mark.slow

ALL = {"weights:tiny", "tokenizer:tiny", "labels:tiny", "thresholds:tiny", "package:tiny-pytorch"}
STAMPS = {"weights:tiny": "weights", "tokenizer:tiny": "tokenizer", "labels:tiny": "labels",
          "thresholds:tiny": "thresholds", "package:tiny-pytorch": "package-pytorch"}

KILLED_AT_SAVE = r"""
import os, signal, sys
from modelkiln.graph import remote

target, real = os.environ["KILL_AT_SAVE_OF"], remote.save

def save(*args, **kwargs):
    if args[1].task == target:  # (cache, plan, ...): the stamp is already written
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

remote.save = save
from doit.doit_cmd import DoitMain
sys.exit(DoitMain().run(sys.argv[1:]))
"""


def _env(cache: Path, write: bool, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "KILN_CACHE_URI": cache.as_uri(),
            "KILN_CACHE_WRITE": "1" if write else "0", **extra}


def _doit(project: Project, cache: Path, write: bool) -> str:
    done = subprocess.run([str(BIN / "doit"), "build:tiny"], cwd=project.root,
                          capture_output=True, text=True, timeout=600, env=_env(cache, write))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    return out


def _saved_tasks(cache: Path) -> set[str]:
    return {json.loads(p.read_bytes())["task"] for p in (cache / "ac").glob("*.json")}


@pytest.mark.parametrize("target", ["labels:tiny", "package:tiny-pytorch"])
def test_a_record_left_unsaved_by_a_kill_after_the_stamp_is_saved_next_run(
        tmp_path: Path, tiny_inputs: Path, target: str) -> None:
    cache = tmp_path / "cache"
    a = make_project(tmp_path / "A", tiny_inputs)
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_SAVE, "build:tiny"], cwd=a.root,
                            capture_output=True, text=True, timeout=600,
                            env=_env(cache, True, KILL_AT_SAVE_OF=target))
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    stamp = a.root / "build" / "tiny" / ".stamps" / f"{STAMPS[target]}.json"
    assert stamp.exists() and target not in _saved_tasks(cache)
    before = stamp.stat()

    out = _doit(a, cache, write=True)
    assert _saved_tasks(cache) >= ALL, f"still unsaved: {ALL - _saved_tasks(cache)}\n{out}"
    after = stamp.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), \
        "the task was rebuilt instead of saved"

    again = subprocess.run([str(BIN / "doit"), "build:tiny"], cwd=a.root, capture_output=True,
                           text=True, timeout=600, env=_env(cache, True))
    assert not [line for line in again.stdout.splitlines() if line.startswith(".  ")], \
        "a third run is not a no-op"

    b = make_project(tmp_path / "B", tiny_inputs)
    restored = _doit(b, cache, write=False)
    for task in ALL:
        assert f"{task}: restored from cache" in restored, restored


SLOW_WRITER = r"""
import sys
from pathlib import Path
from modelkiln.cache import ActionCache, ActionRecord, BlobRef
from modelkiln.cache import open_place

src, size = Path(sys.argv[2]), int(sys.argv[3])
rec = ActionRecord(key="ab" * 32, task="weights:x", stage="weights",
                   outputs=(BlobRef("big.bin", size, "0" * 64),))
print("start", flush=True)
ActionCache(open_place(sys.argv[1]), True, print).save(rec, src)
"""


def test_a_writer_killed_mid_copy_leaves_no_temp_file(tmp_path: Path) -> None:
    cache, src = tmp_path / "cache", tmp_path / "out"
    src.mkdir()
    fifo = src / "big.bin"
    os.mkfifo(fifo)  # the blob's source: the copy waits on what this test writes
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, cache.as_uri(), str(src),
                             str(64 << 20)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "start"

    def give_up() -> None:  # a writer that never opens the FIFO fails the test, not hangs it
        proc.kill()
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))

    timer = threading.Timer(60, give_up)
    timer.start()
    try:
        fd = os.open(fifo, os.O_WRONLY)
        os.write(fd, os.urandom(4 << 20))  # returns once the writer has read most of it
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        os.close(fd)
    finally:
        timer.cancel()
    left = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())
    assert left == [], f"a killed writer left {left} in the cache"


def test_hostile_unsaved_entries_are_ignored(tmp_path: Path) -> None:
    """`.kiln/unsaved/` is local state: a FIFO or a directory there is no record owed (read
    without blocking), and filing one over a directory does not fail the task."""
    from modelkiln.graph import unsaved

    state = tmp_path / ".kiln"
    (state / unsaved.DIR).mkdir(parents=True)
    os.mkfifo(unsaved.path(state, "labels:tiny"))
    unsaved.path(state, "weights:tiny").mkdir()
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.extend(
        unsaved.read(state, t) for t in ("labels:tiny", "weights:tiny")), daemon=True)
    reader.start()
    reader.join(30)
    assert got == [None, None], "reading a FIFO or a directory as a record hung or returned bytes"
    unsaved.mark(state, "weights:tiny", b"{}")  # over a directory: no exception
