"""`kiln plan`: for every task, whether it is up to date, a cache hit, or will run, and why.

Runs nothing and downloads no outputs. A task that is out of date locally is looked up in the
action cache by its key; the key needs the digests of what its upstream tasks produced, which a
cold runner has no stamps for, so they come from the upstream tasks' own action records. A chain of
hits is therefore known from records alone, and the first miss makes everything below it "run".
Lookups go out in waves (one per stage position, every bundle at once) so a thousand bundles cost
a handful of parallel rounds, not thousands of sequential requests.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..artifacts.digest import StatCache, stat_cache
from ..heap import long_lived
from ..model.bundle import Bundle
from ..paths import Layout
from ..stages.base import StagePlan
from ..stages.engines import STAGE as ENGINES
from .cachekey import action_key, material, upstream_identity
from .plans import plan_bundle, skipped
from .state import digest_or_missing, read_stamp, rel_to, status
from .verdicts import BundleMemo, verdicts

if TYPE_CHECKING:  # the cache is opened only when some task is out of date
    from ..cache import ActionCache, ActionRecord, CacheConfig

OK, RUN, HIT, SKIP = "ok", "run", "hit", "skip"


@dataclass(frozen=True)
class TaskPlan:
    task: str
    bundle: str
    stage: str
    backend: str | None
    action: str  # ok (up to date here) | hit (restored from the cache) | run | skip (not here)
    reasons: tuple[str, ...]
    restore_files: int = 0
    restore_bytes: int = 0
    key: str | None = None

    @property
    def run(self) -> bool:
        """Out of date here: it will be restored or run."""
        return self.action in (RUN, HIT)


@dataclass
class _Item:
    plan: StagePlan
    bundle: Bundle
    stamps: dict[str, Path]
    action: str
    reasons: list[str]
    record: ActionRecord | None = None
    key: str | None = None


def plan_tasks(bundles: Sequence[Bundle], skip: frozenset[str] = frozenset(),
               cache: CacheConfig | None = None,
               records: dict[str, ActionRecord] | None = None) -> list[TaskPlan]:
    """Every task of `bundles` in dependency order, classified (see the module doc). The action
    records of cache hits are put in `records` (by task) when it is given."""
    if not bundles:
        return []
    state = Layout(bundles[0].root).state
    per_bundle: list[list[_Item]] = []
    with long_lived():  # plans and verdicts live until the answer is printed
        stat, memo = stat_cache(state), verdicts(state)
        for bundle in bundles:
            plans = plan_bundle(bundle, skip)
            stamps = {p.task: p.stamp for p in plans}
            pending: set[str] = set()
            items = []
            not_here = skipped(plans)
            checked = BundleMemo(memo, bundle.name, bundle.root,
                                 [p for p in plans if p.task not in not_here], stamps)
            for p in plans:  # plans come in dependency order
                if p.task in not_here:
                    items.append(_Item(p, bundle, stamps, SKIP, [not_here[p.task]]))
                    continue
                if p.stage == ENGINES:  # only it reads the cache's engine index
                    from .gather import settle_here

                    p = settle_here(p, stamps, cache, bundle.root, pending)
                st = status(p, bundle.root, stat, stamps, pending, explain=True, memo=checked)
                if st.run:
                    pending.add(p.task)
                items.append(_Item(p, bundle, stamps, RUN if st.run else OK, list(st.reasons)))
            per_bundle.append(items)
    if any(i.action == RUN for items in per_bundle for i in items):  # else nothing to look up
        from .handles import cache_for

        handle = cache_for(cache, bundles[0].root)
        if handle is not None:
            _look_up(per_bundle, handle, stat)
            _restate(per_bundle)
    stat.save()
    if records is not None:
        records.update({i.plan.task: i.record for items in per_bundle for i in items if i.record})
    return [TaskPlan(i.plan.task, i.plan.bundle, i.plan.stage, i.plan.backend, i.action,
                     tuple(i.reasons), len(i.record.outputs) if i.record else 0,
                     i.record.size if i.record else 0, i.key)
            for items in per_bundle for i in items]


def _look_up(per_bundle: list[list[_Item]], cache: ActionCache, stat: StatCache) -> None:
    from .remote import expected  # imports the cache, like this function's caller

    width = max((len(items) for items in per_bundle), default=0)
    for position in range(width):
        wave: list[_Item] = []
        for items in per_bundle:
            if position < len(items) and items[position].action == RUN:
                item = items[position]
                by_task = {i.plan.task: i for i in items}
                item.key = _key(item, by_task, stat, cache)
                if item.key is None:
                    item.reasons.append("not looked up in the cache: an upstream task will run")
                else:
                    wave.append(item)
        found = cache.lookup_many({i.key: expected(i.plan) for i in wave if i.key})
        for item in wave:
            record = found.get(item.key or "")
            if record is None:
                item.reasons.append(f"cache miss (key {(item.key or '')[:12]})")
                continue
            item.action, item.record = HIT, record
            item.reasons.append(f"cache hit: restores {len(record.outputs)} files, "
                                f"{record.size:,} bytes (key {record.key[:12]})")


def _restate(per_bundle: list[list[_Item]]) -> None:
    """"upstream T will run" was written before the cache was asked; where T is a hit, it will
    be restored, not run."""
    for items in per_bundle:
        hits = {i.plan.task for i in items if i.action == HIT}
        for item in items:
            item.reasons = [f"upstream {r[9:-9]} will be restored from the cache"
                            if r.startswith("upstream ") and r.endswith(" will run")
                            and r[9:-9] in hits else r for r in item.reasons]


def _key(item: _Item, by_task: dict[str, _Item], stat: StatCache,
         cache: ActionCache) -> str | None:
    """The task's cache key (an absent input counts as "missing", as when it runs), or None
    when an upstream task will run."""
    root = item.bundle.root
    inputs = {rel_to(p, root): digest_or_missing(stat, p) for p in item.plan.inputs}
    ups: dict[str, str] = {}
    reports: dict[str, object] = {}
    for task in item.plan.upstream:
        up = by_task[task]
        if up.action == HIT and up.record is not None:
            rec = up.record
            ups[task] = upstream_identity(rec.outputs_aggregate, rec.inputs, rec.report)
            reports[task] = rec.report
        elif up.action == OK:
            stamp = read_stamp(up.plan.stamp)
            if stamp is None:
                return None
            ups[task] = upstream_identity(stamp.get("outputs_aggregate", ""),
                                          stamp.get("inputs", {}), stamp.get("report", {}))
            reports[task] = stamp.get("report")
        else:
            return None
    # engines: the other runners' engines of the family the trt task (hit or built) reports
    from .gather import settle, trt_task

    item.plan = settle(item.plan, reports.get(trt_task(item.plan)), cache)
    return action_key(material(item.plan, inputs, ups))
