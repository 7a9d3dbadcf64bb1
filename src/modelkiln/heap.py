"""Long-lived objects and CPython's cyclic garbage collector.

A no-op over 1,000 bundles builds about a million objects that live as long as the process:
converted bundles, plans, task dicts, the stat cache and the up-to-date verdicts. With the default
thresholds (a collection every 700 new container objects) the collector walks the young ones again
and again while they are made, and every full collection walks all of them: about a tenth of the
no-op. None of them is garbage, so they are made with collection paused and then frozen
(`gc.freeze`: moved to a generation no later collection looks at). Collection resumes before any
task runs, so a stage that runs in this process (a torch export) is collected as usual.
"""
from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def long_lived() -> Iterator[None]:
    """Objects made inside are kept for the process's life: no collection while they are made,
    and none of them looked at again afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


@contextmanager
def held_until_work() -> Iterator[None]:
    """The graph a build is about to check (task dicts, plans, the verdicts that check them) is
    long-lived too, and a no-op never gets past checking it: collection is paused while it is
    made, what was made is frozen, and collection stays paused (doit's own task objects come
    next) until `work` says a task really runs."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()


def work() -> None:
    """A task is about to run (in this process or a worker forked from it): freeze the graph and
    collect as usual again."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def release() -> None:
    """The graph is done with (an in-process build returned): its objects may be collected again
    once they are garbage, and collection runs as usual."""
    gc.unfreeze()
    gc.enable()
