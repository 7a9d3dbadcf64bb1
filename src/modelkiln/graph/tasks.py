"""StagePlans -> doit task generators. The only module that imports doit.

One doit task per (stage, bundle), `build:<name>` as the group of every enabled backend's
package. doit is told nothing about file contents: each task's `uptodate` is a `Fresh` check
that reads the task's stamp (graph.state), so content digests, params digests and output
verification all follow one rule, and `kiln plan` can explain it without doit.
"""
from __future__ import annotations

import inspect
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifacts.digest import stat_cache
from ..errors import KilnError
from ..heap import held_until_work, release, work
from ..model.bundle import BrokenSpec, Bundle
from ..paths import Layout
from ..stages.base import StagePlan
from ..stages.engines import STAGE as ENGINES
from . import unsaved
from .depfile import usable
from .plans import STAGES, plan_bundle, skipped, upstream_of
from .state import status
from .verdicts import BundleMemo, verdicts

if TYPE_CHECKING:  # a no-op build imports neither the cache nor the executor (~0.1 s)
    from ..cache import CacheConfig

TaskDict = dict[str, Any]  # doit's own task-dict format

# the one-line docs `doit list` shows: each stage's own DOC, plus the two groups the graph adds
OTHER_DOCS = {
    "publish": "publish built bundles to S3 / file:// and the model store",
    "build": "build every enabled backend's bundle",
}


def stage_doc(basename: str) -> str:
    stage = STAGES.get(basename)
    return stage.DOC if stage is not None else OTHER_DOCS.get(basename, basename)


class Fresh:
    """doit `uptodate` callable: True when the task's stamp says nothing changed."""

    # doit asks inspect.signature() of every uptodate callable whether it wants `task`/`values`;
    # a fixed empty signature answers at once (deriving it from __call__ cost ~40 us a task).
    __signature__ = inspect.Signature()

    def __init__(self, plan: StagePlan, root: Path, state: Path, memo: BundleMemo,
                 cache: CacheConfig | None = None):
        self.plan, self.root, self.state, self.memo, self.cache = plan, root, state, memo, cache
        self.stamps = memo.stamps

    def __call__(self) -> bool:
        if unsaved.pending(self.state, self.plan.task) and unsaved.may_save(self.cache, self.root):
            return False  # a killed run's record is owed to the cache: the action saves it
        if self.memo.holds():  # the bundle's verdict (graph.verdicts): what `status` asks first
            return True
        cache = stat_cache(self.state)
        plan = self.plan
        if plan.stage == ENGINES:  # only it reads the cache's engine index
            from .gather import settle_here

            plan = settle_here(plan, self.stamps, self.cache, self.root)
        return not status(plan, self.root, cache, self.stamps, memo=self.memo).run


def _action(plan: StagePlan, bundle: Bundle, upstream: tuple[StagePlan, ...],
            cache: CacheConfig | None = None) -> Any:
    """doit python-action: run the stage; a KilnError becomes a readable TaskFailed."""
    from doit.exceptions import TaskFailed

    from .execute import execute

    work()
    try:
        return execute(plan, bundle, upstream, cache)
    except KilnError as exc:
        return TaskFailed(f"{plan.task}: {exc}")


def _publish(bundle: Bundle, backends: tuple[str, ...], to: str | None) -> Any:
    """doit python-action of `publish:<name>`: every built backend, then the registry."""
    from doit.exceptions import TaskFailed

    from ..publish.release import refuse_locked_backends, release
    from .execute import log

    work()
    try:
        refuse_locked_backends(bundle, backends)  # before the first backend is sent anywhere
        for backend in backends:
            r = release(bundle, backend, to=to)
            sent = "unchanged, uploaded nothing" if r.remote.unchanged else \
                f"{r.remote.bytes_uploaded} bytes uploaded"
            store = f"; store {r.store.path}" if r.store else ""
            log(f"publish:{bundle.name}: {backend} {r.version} -> {r.remote.destination} "
                 f"({sent}){store}; registry {r.registry_name}")
    except KilnError as exc:
        return TaskFailed(f"publish:{bundle.name}: {exc}")
    return None


def task_dicts(bundles: list[Bundle], skip: frozenset[str] = frozenset(),
               to: str | None = None, cache: CacheConfig | None = None) -> dict[str, list[TaskDict]]:
    """basename -> doit task dicts (one per bundle, or per bundle and backend)."""
    groups: dict[str, list[TaskDict]] = defaultdict(list)
    for bundle in bundles:
        plans = plan_bundle(bundle, skip)
        not_here = skipped(plans)  # e.g. trt without a GPU: no task, nothing depends on it
        plans = [p for p in plans if p.task not in not_here]
        stamps = {p.task: p.stamp for p in plans}
        state = Layout(bundle.root).state
        memo = BundleMemo(verdicts(state), bundle.name, bundle.root, plans, stamps)
        for p in plans:
            basename, name = p.task.split(":", 1)
            groups[basename].append({
                "name": name, "doc": p.doc,
                "actions": [(_action, (p, bundle, upstream_of(p, plans), cache))],
                "task_dep": list(p.upstream),
                "uptodate": [Fresh(p, bundle.root, state, memo, cache)],
                "verbosity": 2,
            })
        packages = [p for p in plans if p.stage == "package"]
        groups["publish"].append({
            "name": bundle.name, "doc": f"publish {bundle.name} to S3/file://, store and registry",
            "actions": [(_publish, (bundle, tuple(p.backend for p in packages), to))],
            "task_dep": [p.task for p in plans if p.stage in ("package", "image", "imagetest")],
            "verbosity": 2,
        })
        groups["build"].append({
            "name": bundle.name, "doc": f"build every enabled backend of {bundle.name}",
            "actions": None,
            "task_dep": [p.task for p in plans if p.stage in ("package", "image", "imagetest")],
        })
    return groups


def _generator(basename: str, dicts: list[TaskDict]) -> Callable[[], Iterator[TaskDict]]:
    def gen() -> Iterator[TaskDict]:
        yield {"name": None, "doc": stage_doc(basename)}
        yield from dicts
    gen.__name__ = f"task_{basename}"
    gen.__doc__ = stage_doc(basename)
    return gen


# --- broken specs: placeholder tasks that fail with the spec's problems -------------------------

def _broken_action(spec: BrokenSpec) -> Any:
    """doit python-action of every task of a spec that does not validate: fail with its problems."""
    from doit.exceptions import TaskFailed

    return TaskFailed(spec.message)


def add_broken(groups: dict[str, list[TaskDict]], broken: Sequence[BrokenSpec]) -> None:
    """Give each broken spec the per-bundle task names a user would type (`build:<name>`,
    `weights:<name>` ...), each failing with the spec's problems; other bundles are untouched."""
    for spec in broken:
        if not spec.name:
            continue
        for basename in (*STAGES, "publish", "build"):
            if basename in ("package", "image", "imagetest"):  # named per backend, which a broken spec lacks
                continue
            groups.setdefault(basename, []).append({
                "name": spec.name, "doc": f"BROKEN SPEC {spec.spec_path.name}: run `kiln validate`",
                "actions": [(_broken_action, (spec,))], "verbosity": 2})


def doit_namespace(bundles: list[Bundle], root: Path, skip: frozenset[str] = frozenset(),
                   to: str | None = None, cache: CacheConfig | None = None,
                   broken: Sequence[BrokenSpec] = ()) -> dict[str, Any]:
    """What dodo.py exposes: DOIT_CONFIG plus one `task_<stage>` generator per stage."""
    state = Layout(root).state
    state.mkdir(parents=True, exist_ok=True)
    namespace: dict[str, Any] = {"DOIT_CONFIG": {
        "backend": "sqlite3", "dep_file": str(usable(state / "doit.sqlite3")),
        "default_tasks": ["build"], "verbosity": 2,
    }}
    with held_until_work():
        groups = task_dicts(bundles, skip, to, cache)
        add_broken(groups, broken)
        verdicts(state)
    for basename in (*STAGES, "publish", "build"):
        if basename in groups:
            namespace[f"task_{basename}"] = _generator(basename, groups[basename])
    return namespace


def run_doit(bundles: list[Bundle], tasks: list[str], jobs: int = 1,
             skip: frozenset[str] = frozenset(), to: str | None = None,
             cache: CacheConfig | None = None, broken: Sequence[BrokenSpec] = ()) -> int:
    """Run doit over the bundles' task graph; returns doit's exit status (non-zero: a task failed)."""
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    try:
        namespace = doit_namespace(bundles, bundles[0].root, skip, to, cache, broken)
        args = ["run"] + (["-n", str(jobs), "-P", "process"] if jobs > 1 else [])
        status: int = DoitMain(ModuleTaskLoader(namespace)).run(args + tasks)
    finally:
        release()
    return status


def _doit_var(name: str, argv: list[str] | None) -> list[str]:
    """Values of `name=value` words on doit's command line (doit's own `get_var` convention)."""
    argv = sys.argv if argv is None else argv
    return [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]


def skipped_backends(argv: list[str] | None = None) -> frozenset[str]:
    """Backends skipped for this run: `doit ... skip=onnx` or KILN_SKIP=onnx (comma-separated)."""
    values = [*_doit_var("skip", argv), os.environ.get("KILN_SKIP", "")]
    return frozenset(s.strip() for v in values for s in v.split(",") if s.strip())


def publish_target(argv: list[str] | None = None) -> str | None:
    """Destination override for `publish:<name>`: `doit publish to=local` (or any URI template)."""
    values = _doit_var("to", argv)
    return values[-1] if values else None
