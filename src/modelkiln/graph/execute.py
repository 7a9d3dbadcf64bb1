"""Run one task: lock it, snapshot inputs, restore it from the cache or run the stage into a fresh
directory, swap it in, stamp it, and (when this run may) save it to the cache.

Input digests are taken *before* the stage runs, so an input edited while the task runs is seen
as changed on the next run. The old stamp is removed first and the new one written last. The task
lock makes concurrent builds in one project safe: a second run waits for the first to finish the
task, then finds it up to date.

A run that may write the cache files the record among the unsaved ones (graph.unsaved) before the
stamp and drops it after the save, so a kill after the stamp is repaired by the next trusted run:
it finds the task up to date with its record unsaved, and saves it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .. import sources
from ..artifacts.atomic import staged_dir, sweep_leftovers, write_bytes
from ..artifacts.digest import StatCache, canonical_json, sha256_file, stat_cache
from ..cache import ActionCache, CacheConfig
from ..errors import BuildError, DriftError, KilnError
from ..model.bundle import Bundle
from ..paths import Layout
from ..stages.base import RunContext, StagePlan
from . import gather, remote, unsaved
from .handles import cache_for, log
from .locks import task_lock
from .plans import STAGES
from .state import drop_stamp, read_stamp, snapshot, stamp_for, status, walk_outputs


def execute(plan: StagePlan, bundle: Bundle, upstream: tuple[StagePlan, ...],
            cache_config: CacheConfig | None = None) -> Any:
    """Build `plan`'s outputs; returns a small report (doit stores it as task values), or doit's
    TaskError when a remote source drifted from its lock (`_drifted`)."""
    layout = Layout(bundle.root)
    stat = stat_cache(layout.state)
    stamps = {p.task: p.stamp for p in upstream}
    stamps[plan.task] = plan.stamp
    plan = gather.settle_here(plan, stamps, cache_config, bundle.root)  # engines: other runners'
    with task_lock(layout.state, plan.task, log):
        if not status(plan, bundle.root, stat, stamps).run:  # built by a concurrent run, or
            return _up_to_date(plan, bundle, upstream, cache_config)  # its record left unsaved
        inputs = snapshot(plan, bundle.root, stat, stamps)
        unsaved.clear(layout.state, plan.task)  # a record of outputs that are about to go
        drop_stamp(plan.stamp)
        sweep_leftovers(plan.out_dir)
        cache = cache_for(cache_config, bundle.root)
        keyed = remote.key_of(plan, inputs, stamps) if cache is not None else None
        if cache is not None and keyed is not None:
            record = cache.lookup(keyed[0], remote.expected(plan))
            digests = remote.restore(cache, plan, record, stat) if record else None
            if record is not None and digests is not None:
                _finish(plan, stat, inputs, digests, record.report)
                log(f"{plan.task}: restored from cache ({len(digests)} files, "
                    f"{record.size:,} bytes, key {keyed[0][:12]})")
                gather.index(cache, plan, record, log)
                return {"outputs": len(digests), "restored": True}
        plan = gather.fetch(plan, cache, layout, stat, log)
        try:
            sources.ensure_inputs(plan.inputs, log, layout.state)  # remote files the stage reads
        except DriftError as exc:  # doit's "error" status (2), not a failed task's 1: plain
            return _drifted(plan, exc)  # `doit build` exits 2 on drift like `kiln build`
        outputs, report = _run(plan, bundle, layout, upstream, stat)
        saving = remote.record_for(plan, keyed[0], keyed[1], outputs, report, log) \
            if cache is not None and keyed is not None and cache.write else None
        if saving is not None:  # before the stamp: a kill after it leaves the save owed
            unsaved.mark(layout.state, plan.task, saving.to_bytes())
        _finish(plan, stat, inputs, outputs, report)
        if cache is not None and saving is not None:
            if remote.save(cache, plan, saving, layout.state):
                log(f"{plan.task}: saved to cache (key {saving.key[:12]})")
            _after_save(cache, plan, bundle, upstream, saving.key)
        return {"outputs": len(outputs)}


def _drifted(plan: StagePlan, exc: DriftError) -> Any:
    """A remote source differs from its lock: doit's TaskError, which makes doit exit 2 (its
    "error while executing a task"; a TaskFailed exits 1). doit also exits 2 for an action that
    raised an unexpected exception, so 2 from plain doit says "drift or a crash" while
    `kiln build` exits 2 only on drift (its drift mark, api.build)."""
    from doit.exceptions import TaskError

    return TaskError(f"{plan.task}: {exc}")


def _up_to_date(plan: StagePlan, bundle: Bundle, upstream: tuple[StagePlan, ...],
                cache_config: CacheConfig | None) -> dict[str, Any]:
    """A task found up to date under its lock: another run built it, or an earlier run of
    this one was killed (or its save failed) after the stamp, leaving its record unsaved."""
    state = Layout(bundle.root).state
    cache = cache_for(cache_config, bundle.root) \
        if unsaved.read(state, plan.task) is not None else None
    if cache is not None and cache.write and not cache.broken:
        record = remote.save_unsaved(cache, plan, read_stamp(plan.stamp), state)
        if record is not None:
            log(f"{plan.task}: up to date; saved the record an interrupted run left unsaved "
                f"(key {record.key[:12]})")
            _after_save(cache, plan, bundle, upstream, record.key)
            return {"outputs": 0, "saved": True}
    log(f"{plan.task}: up to date (built by a concurrent run)")
    return {"outputs": 0, "concurrent": True}


def _after_save(cache: ActionCache, plan: StagePlan, bundle: Bundle,
                upstream: tuple[StagePlan, ...], key: str) -> None:
    """The side entries a trusted run files beside a record: engine index, review summary."""
    gather.index_saved(cache, plan, key, log)
    if plan.stage == "package":
        remote.save_summary(cache, plan, bundle.root, {p.stage: p for p in upstream})


def _run(plan: StagePlan, bundle: Bundle, layout: Layout, upstream: tuple[StagePlan, ...],
         stat: StatCache) -> tuple[dict[str, str], dict[str, Any]]:
    with staged_dir(plan.out_dir) as tmp:
        ctx = RunContext(plan=plan, bundle=bundle, layout=layout, out=tmp,
                         upstream={p.stage: p for p in upstream}, cache=stat, log=log)
        try:
            report = STAGES[plan.stage].run(ctx) or {}
        except KilnError as exc:
            kept = _keep_failed(tmp, plan.out_dir)
            raise BuildError(f"{exc} (what the stage wrote is kept in {kept})") from None
        outputs = {rel: _digest_new(stat, tmp / rel) for rel in walk_outputs(tmp)}
    return outputs, report


def _finish(plan: StagePlan, stat: StatCache, inputs: dict[str, str], outputs: dict[str, str],
            report: dict[str, Any]) -> None:
    """What every completed task does, run or restored: drop a stale failure, remember the output
    digests by their final paths (so no no-op re-reads them), write the stamp last."""
    shutil.rmtree(_failed_dir(plan.out_dir), ignore_errors=True)
    for rel, digest in outputs.items():
        stat.remember(plan.out_dir / rel, digest)
    write_bytes(plan.stamp, canonical_json(stamp_for(plan, inputs, outputs, report)))
    stat.save()


def _failed_dir(final: Path) -> Path:
    return final.with_name(final.name + ".failed")


def _keep_failed(tmp: Path, final: Path) -> Path:
    """Move a failed stage's staging directory to `<out_dir>.failed/` (replacing an older one) so
    its reports, e.g. a failed gate's parity.json, can be read. It is never an input to anything."""
    failed = _failed_dir(final)
    shutil.rmtree(failed, ignore_errors=True)
    os.replace(tmp, failed)
    return failed


def _digest_new(cache: StatCache, path: Path) -> str:
    """Digest of an output this task just wrote into its private staging directory (a stage that
    hashed it while writing, like package's tarball, has already told the cache)."""
    return cache.peek(path) or sha256_file(path)
