"""The graph's side of the action cache: compute a task's key, restore it, save it.

A restore goes through the same staging directory and stamp as a run: outputs are fetched into a
fresh directory beside the final one (each blob checked for size and sha256), swapped in, then
the stamp is written from this checkout's own input snapshot and the record's report, so the next
no-op finds exactly what a local run would have left. A trusted writer also records a small
summary of each packaged bundle under the git commit it was built from, which `kiln plan
--markdown` reads as the base of a review.

A record is restored only for the task it was written for (`expected`): its task and stage, a key
that its own key material digests to, and the outputs the stage declares (the exact
files where a stage's names are fixed, the tokenizer's from its inputs, the ONNX stages' model
plus the external data their report names, patterns for engines and image layouts): each stage's
`WRITES` and `OPTIONAL` (stages.base.Stage: names, or patterns matching within one path segment;
a name in WRITES is required, a WRITES pattern and everything in OPTIONAL is allowed), None where
it is decided here or unchecked. A writer does not save a record a reader would refuse.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ..artifacts import names
from ..artifacts.atomic import staged_dir
from ..artifacts.digest import StatCache
from ..cache import ActionCache, ActionRecord, BadRecord, BlobRef, Expected
from ..cache.records import parse_json, safe_relpath, shown
from ..errors import KilnError
from ..stages.base import StagePlan
from . import unsaved
from .basegit import clean_head
from .cachekey import action_key, material, upstream_identity
from .plans import STAGES
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


ONNX_MODEL = {"onnx": "model.onnx", "int8": names.ONNX_INT8}  # plus report["external_data"]


def declared(plan: StagePlan, report: Mapping[str, Any]) -> tuple[set[str], tuple[str, ...]] | None:
    """(required paths, allowed patterns) of the task's outputs, or None when its stage
    declares nothing (WRITES None: only the names' safety is checked)."""
    if plan.stage == "tokenizer":
        return {f"{names.TOKENIZER_DIR}/{p.name}" for p in plan.inputs}, ()
    if plan.stage in ONNX_MODEL:
        data = report.get("external_data", [])
        if not isinstance(data, list) or not all(
                isinstance(d, str) and safe_relpath(d) and "/" not in d for d in data):
            data = ["(an invalid external_data list)"]
        return {ONNX_MODEL[plan.stage], *data}, ()
    stage = STAGES.get(plan.stage)
    own = stage.WRITES if stage is not None else None
    if stage is None or own is None:
        return None
    required = {n for n in own if not _GLOB & set(n)}
    return required, (*(n for n in own if n not in required), *stage.OPTIONAL)


_GLOB = frozenset("*?[")


def _fits(path: str, pattern: str) -> bool:
    parts, want = path.split("/"), pattern.split("/")
    return len(parts) == len(want) and all(fnmatchcase(p, w) for p, w in zip(parts, want,
                                                                            strict=True))


def undeclared(plan: StagePlan, record: ActionRecord) -> str | None:
    """What is wrong with the record's output list for this task's stage, or None."""
    wanted = declared(plan, record.report)
    if wanted is None:
        return None
    required, allowed = wanted
    paths = {b.path for b in record.outputs}
    missing = sorted(required - paths)
    if missing:
        return f"{shown(missing[0])} is missing"
    extra = sorted(p for p in paths - required if not any(_fits(p, a) for a in allowed))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        return f"{shown(extra[0])}{more} is not one of its outputs"
    return None


def expected(plan: StagePlan) -> Expected:
    """What a record restored for `plan` must say (see the module doc)."""
    return Expected(task=plan.task, stage=plan.stage, key_of=action_key,
                    outputs=lambda record: undeclared(plan, record))


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


def record_for(plan: StagePlan, key: str, mat: dict[str, Any], outputs: Mapping[str, str],
               report: dict[str, Any], log: Callable[[str], None]) -> ActionRecord | None:
    """The record a run of `plan` saves, or None (warned) when a reader would refuse it."""
    blobs = tuple(BlobRef(rel, (plan.out_dir / rel).stat().st_size, digest)
                  for rel, digest in sorted(outputs.items()))
    record = ActionRecord(key=key, task=plan.task, stage=plan.stage, outputs=blobs,
                          report=report, inputs=dict(mat["inputs"]), material=mat)
    try:
        ActionRecord.from_bytes(record.to_bytes(), key).check(expected(plan))
    except BadRecord as exc:
        log(f"kiln: warning: {plan.task}: not saved to the cache: {exc}")
        return None
    return record


def save(cache: ActionCache, plan: StagePlan, record: ActionRecord, state: Path) -> bool:
    """Save `record` (filed under `state`'s unsaved records before the stamp was written); the
    unsaved file goes once the cache holds a record for the key, whoever wrote it."""
    saved = cache.save(record, plan.out_dir)
    if not cache.broken:
        unsaved.clear(state, plan.task)
    return saved


def save_unsaved(cache: ActionCache, plan: StagePlan, stamp: Mapping[str, Any] | None,
                 state: Path) -> ActionRecord | None:
    """The record a killed or failed save left unsaved, saved now; None when there was none
    (or it no longer describes the outputs in place, which the stamp records: then it goes)."""
    data = unsaved.read(state, plan.task)
    if data is None:
        return None
    try:
        raw = parse_json(data)
        record = ActionRecord.from_bytes(data, str(raw.get("key") if isinstance(raw, dict) else ""))
        record.check(expected(plan))
    except BadRecord:
        record = None
    if record is None or stamp is None or record.digests() != stamp.get("outputs"):
        unsaved.clear(state, plan.task)
        return None
    save(cache, plan, record, state)
    return record


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
    metrics: dict[str, Any] = {}  # per-label F1 and the like, for the review comment's chart
    if thresholds_plan is not None:
        try:
            cuts = json.loads((thresholds_plan.out_dir / names.THRESHOLDS).read_bytes())
            metrics = json.loads((thresholds_plan.out_dir / names.THRESHOLD_METRICS).read_bytes())
        except (OSError, ValueError):
            pass
    summary = {"bundle": plan.bundle, "backend": plan.backend, "commit": commit,
               "manifest": manifest, "thresholds": cuts, "metrics": metrics}
    cache.put_summary(index_key(plan.bundle, commit, plan.backend),
                      json.dumps(summary, sort_keys=True).encode())
