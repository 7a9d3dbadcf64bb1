"""Multi-architecture TensorRT bundles: the engines other runners built, found through the cache.

A runner builds the engine for its own GPU only. Trusted runs add each `trt:` output to the
cache's engine index (`engines/<family>/<platform>.json`, see cache.engine_index); the `engines`
stage then packs this host's engine together with every other engine of the same family the
index holds. The graph does the cache work, since stages sit below the cache:

- `settle`, at every up-to-date check of `engines:<name>` (doit's, `kiln plan`'s, and the one
  `execute` repeats under the task lock): lists `engines/<family>/` and reads each small entry.
  The family comes from the trt task's report (its stamp, or its action record on a cold runner),
  so this needs neither a GPU nor engine bytes. It costs one listing per bundle with
  backends.tensorrt whose trt task runs on this host, and only when a cache is configured (the
  embedded file:// cache: a directory listing; S3: one ListObjectsV2, by the stdlib signed
  GET where it applies, so a no-op does not import boto3). The
  entries' sha256s become the task's `other_runners` parameter, and only when there are some,
  so a single-runner build keeps its parameters: an engine built elsewhere later reruns
  `engines`, `trtparity` and the tensorrt package, and `kiln plan` says
  "spec changed: other_runners".
- `fetch`, only when the task runs: each entry's blobs, verified (size and sha256), into
  `.kiln/engines/<bundle>/<family>/<entry>/`, reused while every file keeps its digest. A
  corrupt or missing blob leaves that engine out with a warning; the build goes on. A set left
  out because the cache failed is dropped from the parameters the stamp keeps, so the next
  build tries again; a listing that fails keeps the set the last build gathered.
- `index`, on trusted runs after a trt record is saved or restored: writes the entry naming the
  record that is in the cache (first writer wins, as for records).
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..artifacts.atomic import staged_dir
from ..artifacts.digest import StatCache, canonical_json
from ..cache import ActionCache, ActionRecord, CacheConfig
from ..cache.engine_index import (
    EngineEntry,
    fetch_entry,
    from_record,
    list_entries,
    put_entry,
    read_entry,
)
from ..errors import KilnError
from ..paths import Layout
from ..stages.base import StagePlan
from ..stages.engines import FOREIGN, LEFT_OUT, STAGE
from .handles import cache_for
from .state import read_stamp

PARAM = "other_runners"
FETCHED = "engines"  # under .kiln/: engine sets fetched from the cache
Log = Callable[[str], None]


def trt_task(plan: StagePlan) -> str:
    return f"trt:{plan.bundle}"


def _local(report: object) -> tuple[str, str] | None:
    """(architecture, family) of the one engine a trt report describes, or None."""
    engines = report.get("engines") if isinstance(report, Mapping) else None
    if not isinstance(engines, dict) or len(engines) != 1:
        return None
    sm, about = next(iter(engines.items()))
    family = about.get("family_sha256") if isinstance(about, dict) else None
    return (sm, family) if isinstance(family, str) else None


def settle(plan: StagePlan, trt_report: object, cache: ActionCache | None) -> StagePlan:
    """`plan` with the other runners' engines of its family in its parameters (any plan other
    than `engines:`, or one whose trt report is unknown, comes back as it is). Where the cache
    cannot be read, the set the last build gathered stands: an unreachable cache must not make
    an up-to-date bundle drop engines."""
    if plan.stage != STAGE or cache is None:
        return plan
    local = _local(trt_report)
    if local is None:
        return plan
    sm, family = local
    found = {e.platform: digest for e, digest in list_entries(cache, family) if e.sm != sm}
    values: dict[str, Any] = json.loads(plan.params)
    values.pop(PARAM, None)
    if cache.broken:
        last = (read_stamp(plan.stamp) or {}).get("params", {}).get(PARAM)
        if last:
            values[PARAM] = last
    elif found:
        values[PARAM] = {"family": family, "engines": dict(sorted(found.items()))}
    return _with_params(plan, values)


def _with_params(plan: StagePlan, values: dict[str, Any]) -> StagePlan:
    return replace(plan, params=canonical_json(values).decode().strip())


def settle_here(plan: StagePlan, stamps: Mapping[str, Path], config: CacheConfig | None,
                root: Path, pending: Iterable[str] = ()) -> StagePlan:
    """`settle` from the trt task's stamp on this machine; unchanged when trt will run anyway
    (its stamp's family may be stale, and the task runs whatever the engines)."""
    if plan.stage != STAGE:
        return plan
    task = trt_task(plan)
    stamp = read_stamp(stamps[task]) if task in stamps and task not in set(pending) else None
    if stamp is None:
        return plan
    return settle(plan, stamp.get("report"), cache_for(config, root))


class _Refused(KilnError):
    pass


def _intact(where: Path, entry: EngineEntry, stat: StatCache) -> bool:
    """Does a set fetched earlier still hold exactly the entry's bytes?"""
    try:
        return all(stat.digest(where / b.path) == b.sha256 for b in entry.files)
    except OSError:
        return False


def _download(cache: ActionCache, entry: EngineEntry, where: Path, stat: StatCache) -> str | None:
    try:
        with staged_dir(where) as tmp:
            why = fetch_entry(cache, entry, tmp)
            if why:
                raise _Refused(why)
    except _Refused as exc:
        return str(exc)
    for blob in entry.files:
        stat.remember(where / blob.path, blob.sha256)
    return None


def fetch(plan: StagePlan, cache: ActionCache | None, layout: Layout, stat: StatCache,
          log: Log) -> StagePlan:
    """`plan` with the fetched sets (and those refused, with why) in its `extra`, for the stage."""
    wanted = json.loads(plan.params).get(PARAM) if plan.stage == STAGE else None
    if not wanted or cache is None:
        return plan
    family: str = wanted["family"]
    here = layout.state / FETCHED / plan.bundle
    for old in here.iterdir() if here.is_dir() else ():
        if old.name != family[:16]:  # sets of an older model are never needed again
            shutil.rmtree(old, ignore_errors=True)
    sets, left_out, retry = [], {}, set()
    for platform, digest in sorted(wanted["engines"].items()):
        entry = read_entry(cache, family, platform, digest)
        where = here / family[:16] / digest[:16]
        if entry is None:
            why: str | None = "its index entry could not be read back unchanged"
        else:
            why = None if _intact(where, entry, stat) else _download(cache, entry, where, stat)
        if why:
            log(f"kiln: warning: {plan.task}: the engine built on {platform} is left out: {why}")
            left_out[platform] = why
            if cache.broken:  # a transport failure, not bad bytes: the next build tries again
                retry.add(platform)
        else:
            sets.append(f"{platform}={where}")
    if retry:  # so the stamp does not claim them (the broken cache saves no record either)
        values = json.loads(plan.params)
        values[PARAM]["engines"] = {k: v for k, v in wanted["engines"].items() if k not in retry}
        if not values[PARAM]["engines"]:
            del values[PARAM]
        plan = _with_params(plan, values)
    extra = dict(plan.extra)
    extra[FOREIGN] = "\n".join(sets)
    if left_out:
        extra[LEFT_OUT] = json.dumps(left_out, sort_keys=True)
    return replace(plan, extra=tuple(sorted(extra.items())))


def index(cache: ActionCache | None, plan: StagePlan, record: ActionRecord | None,
          log: Log) -> None:
    """On a trusted run, name a trt task's engine in the index (the record that is stored)."""
    if plan.stage != "trt" or cache is None or not cache.write or record is None:
        return
    entry = from_record(record)
    if entry is not None and put_entry(cache, entry):
        log(f"{plan.task}: engine for {entry.platform} added to the cache's engine index")


def index_saved(cache: ActionCache | None, plan: StagePlan, key: str, log: Log) -> None:
    """`index` after a save: reads back the record stored under `key` (ours, or the writer's
    that got there first), so the entry and the record name the same engine."""
    if plan.stage == "trt" and cache is not None and cache.write:
        index(cache, plan, cache.lookup(key), log)
