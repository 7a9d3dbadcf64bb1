"""Crash safety: SIGKILL a publish at every rename, replace, fsync, symlink and unlink it makes
(just before and just after each), and at random instants. After every kill, `current` must name a
complete version that verifies, and re-running the publish must converge to the uninterrupted
result with no debris left.

Children are forked (milliseconds each), patch `os` in their own address space only, and kill
themselves with SIGKILL: no cleanup handler, `finally` or atexit runs, as in a real crash.
"""
from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from distfactory import make_dist
from modelkiln.publish.store import publish_to_store
from modelkiln.store import ModelStore
from store.store_helpers import AGENT, copy_store, debris, fork_run, killed

STEPS = ("rename", "replace", "fsync", "symlink", "unlink")


def _instrument(kill_at: int, when: str, counter: list[int]) -> None:
    """Wrap the os calls that make up the commit protocol; SIGKILL around call number `kill_at`."""
    for name in STEPS:
        real = getattr(os, name)

        def wrapper(*args: object, _real: Callable[..., object] = real, **kwargs: object) -> object:
            counter[0] += 1
            if when == "before" and counter[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            try:
                return _real(*args, **kwargs)
            finally:  # also after a call that raised (unlinking a name that is not there)
                if when == "after" and counter[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

        setattr(os, name, wrapper)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("crash")
    d1 = make_dist(base, version="1.0.0", seed=1)
    d2 = make_dist(base, version="2.0.0", seed=2, weights=300_000)
    big = make_dist(base, version="3.0.0", seed=3, weights=6_000_000)
    template = base / "template"
    publish_to_store(d1, template, AGENT, "1.0.0", {"n": 1})
    return {"base": base, "d1": d1, "d2": d2, "big": big, "template": template}


def _check_after_kill(root: Path, allowed: set[str]) -> None:
    store = ModelStore(root, strict=True)
    current = store.current_version(AGENT)
    assert current in allowed
    store.verify(AGENT)  # current resolves to a complete version whose bytes match


def _check_converged(root: Path, dist: Path, version: str) -> None:
    store = ModelStore(root, strict=True, workers=1)
    result = publish_to_store(dist, root, AGENT, version, {"n": 2}, store=store)
    assert store.current_version(AGENT) == version
    assert store.verify(AGENT, version).checksum == result.checksum
    assert store.verify(AGENT, "1.0.0").version == "1.0.0"
    assert debris(root / AGENT) == []
    seqs = [v.seq for v in store.list_versions(AGENT)]
    assert len(seqs) == len(set(seqs))


def _count_steps(root: Path, dist: Path, version: str) -> int:
    counter = [0]

    def child() -> None:
        _instrument(10**9, "never", counter)
        publish_to_store(dist, root, AGENT, version, {"n": 2}, store=ModelStore(root, workers=1))
        os._exit(100 + counter[0])  # the count travels back in the exit status

    status = fork_run(child)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) > 100, status
    return os.WEXITSTATUS(status) - 100


def test_kill_before_and_after_every_step(world: dict[str, Path], tmp_path: Path) -> None:
    probe = copy_store(world["template"], tmp_path / "probe")
    steps = _count_steps(probe, world["d2"], "2.0.0")
    assert steps >= 15  # fsyncs of 8 files + manifest + dirs, the pending journal, rename, swap
    kills = 0
    for when in ("before", "after"):
        for k in range(1, steps + 1):
            root = copy_store(world["template"], tmp_path / f"{when}-{k}")

            def child(k: int = k, when: str = when, root: Path = root) -> None:
                _instrument(k, when, [0])
                publish_to_store(world["d2"], root, AGENT, "2.0.0", {"n": 2},
                                 store=ModelStore(root, workers=1))

            status = fork_run(child)
            kills += killed(status)
            assert killed(status) or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
            _check_after_kill(root, {"1.0.0", "2.0.0"})
            _check_converged(root, world["d2"], "2.0.0")
    assert kills == 2 * steps


def test_kill_at_every_step_of_the_first_publish(world: dict[str, Path], tmp_path: Path) -> None:
    steps = _count_steps(tmp_path / "probe", world["d1"], "1.0.0")
    for k in range(1, steps + 1):
        root = tmp_path / f"first-{k}"

        def child(k: int = k, root: Path = root) -> None:
            _instrument(k, "before", [0])
            publish_to_store(world["d1"], root, AGENT, "1.0.0", {}, store=ModelStore(root, workers=1))

        assert killed(fork_run(child))
        store = ModelStore(root, strict=False)
        if store.get_current(AGENT) is not None:  # nothing, or a complete version
            store.verify(AGENT)
        publish_to_store(world["d1"], root, AGENT, "1.0.0", {}, store=store)
        assert store.current_version(AGENT) == "1.0.0" and debris(root / AGENT) == []


def test_kill_at_random_instants(world: dict[str, Path], tmp_path: Path) -> None:
    rng = random.Random(20251028)
    timing = copy_store(world["template"], tmp_path / "timing")
    start = time.perf_counter()
    publish_to_store(world["big"], timing, AGENT, "3.0.0", {})
    duration = time.perf_counter() - start
    outcomes = {"killed": 0, "finished": 0}
    for i in range(20):
        root = copy_store(world["template"], tmp_path / f"rand-{i}")
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                publish_to_store(world["big"], root, AGENT, "3.0.0", {})
            except BaseException:
                code = 1
            os._exit(code)
        time.sleep(rng.uniform(0, duration))  # most land mid-publish; a few may finish first
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert killed(status) or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
        outcomes["killed" if killed(status) else "finished"] += 1
        _check_after_kill(root, {"1.0.0", "3.0.0"})
        _check_converged(root, world["big"], "3.0.0")
    assert outcomes["killed"] >= 5, outcomes  # timing on a loaded box varies; most must land
