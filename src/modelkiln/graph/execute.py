"""Run one task: snapshot inputs, run the stage into a fresh directory, swap it in, stamp it.

Input digests are taken *before* the stage runs, so an input edited while the task runs is seen
as changed on the next run. The old stamp is removed first and the new one written last.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ..artifacts.atomic import staged_dir, sweep_leftovers, write_bytes
from ..artifacts.digest import StatCache, canonical_json, sha256_file
from ..errors import BuildError, KilnError
from ..model.bundle import Bundle
from ..paths import Layout
from ..stages.base import RunContext, StagePlan
from .plans import STAGES
from ..artifacts.digest import stat_cache
from .state import snapshot, stamp_for, walk_outputs


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def execute(plan: StagePlan, bundle: Bundle, upstream: tuple[StagePlan, ...]) -> dict:
    """Build `plan`'s outputs; returns the stage's report (doit stores it as task values)."""
    layout = Layout(bundle.root)
    cache = stat_cache(layout.state)
    stamps = {p.task: p.stamp for p in upstream}
    inputs = snapshot(plan, bundle.root, cache, stamps)
    plan.stamp.unlink(missing_ok=True)
    sweep_leftovers(plan.out_dir)
    with staged_dir(plan.out_dir) as tmp:
        ctx = RunContext(plan=plan, bundle=bundle, layout=layout, out=tmp,
                         upstream={p.stage: p for p in upstream}, cache=cache, log=log)
        try:
            report = STAGES[plan.stage].run(ctx)
        except KilnError as exc:
            kept = _keep_failed(tmp, plan.out_dir)
            raise BuildError(f"{exc} (what the stage wrote is kept in {kept})") from None
        outputs = {rel: _digest_new(cache, tmp / rel) for rel in walk_outputs(tmp)}
    shutil.rmtree(_failed_dir(plan.out_dir), ignore_errors=True)  # a stale failure, now fixed
    for rel, digest in outputs.items():  # no other writer can touch them: remember them now, by
        cache.remember(plan.out_dir / rel, digest)  # their final paths, so no no-op re-reads them
    write_bytes(plan.stamp, canonical_json(stamp_for(plan, inputs, outputs, report)))
    cache.save()
    return {"outputs": len(outputs)}


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

