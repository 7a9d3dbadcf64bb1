"""The graph's side of the action cache: compute a task's key, restore it, save it.

A restore goes through the same staging directory and stamp as a run: outputs are fetched into a
fresh directory beside the final one (each blob checked for size and sha256), swapped in, then
the stamp is written from this checkout's own input snapshot and the record's report, so the next
no-op finds exactly what a local run would have left. A trusted writer also records a small
summary of each packaged bundle under the git commit it was built from, which `kiln plan
--markdown` reads as the base of a review.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..artifacts import names
from ..artifacts.atomic import staged_dir
from ..artifacts.digest import StatCache
from ..cache import ActionCache, ActionRecord, BlobRef
from ..errors import KilnError
from ..stages.base import StagePlan
from .basegit import clean_head
from .cachekey import action_key, material, upstream_identity
from .state import read_stamp


class _Miss(KilnError):
    """A restore that failed verification: discard the staging directory and run the stage."""


def upstream_identities(plan: StagePlan, stamps: Mapping[str, Path]) -> dict[str, str] | None:
    """Each upstream task's identity from its stamp; None when one has no stamp."""
    out = {}
    for task in plan.upstream:
        stamp = read_stamp(stamps[task])
        if stamp is None:
            return None
        out[task] = upstream_identity(stamp.get("outputs_aggregate", ""),
                                      stamp.get("inputs", {}), stamp.get("report", {}))
    return out


def key_of(plan: StagePlan, inputs: Mapping[str, str],
           stamps: Mapping[str, Path]) -> tuple[str, dict[str, Any]] | None:
    """(key, material) from an input snapshot and the upstream stamps, or None when unknown."""
    ups = upstream_identities(plan, stamps)
    if ups is None:
        return None
    mat = material(plan, inputs, ups)
    return action_key(mat), mat


def restore(cache: ActionCache, plan: StagePlan, record: ActionRecord,
            stat: StatCache) -> dict[str, str] | None:
    """Put the record's outputs in place of `plan.out_dir`; their digests, or None on a miss."""
    try:
        with staged_dir(plan.out_dir) as tmp:
            done = cache.restore(record, tmp)
            if done is None:
                raise _Miss("cache miss")
    except _Miss:
        return None
    for rel, digest in done.digests.items():
        stat.remember(plan.out_dir / rel, digest)
    return done.digests


def save(cache: ActionCache, plan: StagePlan, key: str, mat: dict[str, Any],
         outputs: Mapping[str, str], report: dict[str, Any]) -> bool:
    blobs = tuple(BlobRef(rel, (plan.out_dir / rel).stat().st_size, digest)
                  for rel, digest in sorted(outputs.items()))
    record = ActionRecord(key=key, task=plan.task, stage=plan.stage, outputs=blobs,
                          report=report, inputs=dict(mat["inputs"]), material=mat)
    return cache.save(record, plan.out_dir)


def index_key(bundle: str, commit: str, backend: str) -> str:
    return f"index/{bundle}/{commit}/{backend}.json"


def save_summary(cache: ActionCache, plan: StagePlan, root: Path,
                 upstream: Mapping[str, StagePlan]) -> None:
    """After a package task: its published manifest and the thresholds, under the commit."""
    commit = clean_head(root)
    if commit is None or plan.backend is None:
        return
    manifest = json.loads((plan.out_dir / names.MANIFEST).read_bytes())
    thresholds_plan = upstream.get("thresholds")
    cuts: dict[str, Any] = {}
    if thresholds_plan is not None:
        try:
            cuts = json.loads((thresholds_plan.out_dir / names.THRESHOLDS).read_bytes())
        except (OSError, ValueError):
            cuts = {}
    summary = {"bundle": plan.bundle, "backend": plan.backend, "commit": commit,
               "manifest": manifest, "thresholds": cuts}
    cache.put_summary(index_key(plan.bundle, commit, plan.backend),
                      json.dumps(summary, sort_keys=True).encode())
