"""StagePlans -> doit task generators. The only module that imports doit.

One doit task per (stage, bundle), `build:<name>` as the group of every enabled backend's
package. doit is told nothing about file contents: each task's `uptodate` is a `Fresh` check
that reads the task's stamp (graph.state), so content digests, params digests and output
verification all follow one rule, and `kiln plan` can explain it without doit.
"""
from __future__ import annotations

import fnmatch
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
from . import clean, unsaved
from .depfile import usable
from .plans import STAGES, plan_bundle, skipped, upstream_of
from .state import status
from .verdicts import BundleMemo, verdicts

if TYPE_CHECKING:  # a no-op build imports neither the cache nor the executor (~0.1 s)
    from ..cache import CacheConfig

TaskDict = dict[str, Any]  # doit's own task-dict format
ALL = ("*",)  # force every task (`kiln build --force` without -t, `doit -a`)
DB_BACKEND = "kiln-stamps"  # graph.clean.StampDB, registered under doit.BACKEND in pyproject.toml

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
                 cache: CacheConfig | None = None, forced: bool = False):
        self.plan, self.root, self.state, self.memo, self.cache = plan, root, state, memo, cache
        self.stamps, self.forced = memo.stamps, forced

    def __call__(self) -> bool:
        if self.forced:
            return False
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
            cache: CacheConfig | None = None, forced: bool = False) -> Any:
    """doit python-action: run the stage; a KilnError becomes a readable TaskFailed. A forced
    task is forgotten first and runs its stage: a restore from the cache would not be a rebuild."""
    from doit.exceptions import TaskFailed

    from ..cache import CacheConfig
    from .execute import execute

    work()
    try:
        if forced:
            clean.forget(plan.task, plan.stamp, Layout(bundle.root).state)
            cache = CacheConfig(None, False, "--force")
        return execute(plan, bundle, upstream, cache)
    except KilnError as exc:
        return TaskFailed(f"{plan.task}: {exc}")


def _publish(bundle: Bundle, backends: tuple[str, ...], to: str | None) -> Any:
    """doit python-action of `publish:<name>`: every built backend, then the registry."""
    from doit.exceptions import TaskFailed

    from ..publish.release import refuse_locked_backends, release
    from .handles import log

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


def _clean(plan: StagePlan, state: Path) -> None:
    """doit clean-action: forget the task and remove its outputs (graph.clean)."""
    for path in clean.clean_task(plan, state):
        print(f"removed {path}", file=sys.stderr)


def forced(task: str, patterns: Sequence[str]) -> bool:
    """Whether `task` is one `--force` names: a task, a stage (`onnx`) or a doit `*` pattern."""
    return any(fnmatch.fnmatchcase(task, p) or task.split(":", 1)[0] == p for p in patterns)


def task_dicts(bundles: list[Bundle], skip: frozenset[str] = frozenset(),
               to: str | None = None, cache: CacheConfig | None = None,
               force: Sequence[str] = ()) -> dict[str, list[TaskDict]]:
    """basename -> doit task dicts (one per bundle, or per bundle and backend)."""
    groups: dict[str, list[TaskDict]] = defaultdict(list)
    for bundle in bundles:
        plans = plan_bundle(bundle, skip)
        not_here = skipped(plans)  # e.g. trt without a GPU: no task, nothing depends on it
        plans = [p for p in plans if p.task not in not_here]
        stamps = {p.task: p.stamp for p in plans}
        state = Layout(bundle.root).state
        memo = BundleMemo(verdicts(state), bundle.name, bundle.root, plans, stamps)
        clean.register(plans, state)
        for p in plans:
            basename, name = p.task.split(":", 1)
            force_it = forced(p.task, force)
            groups[basename].append({
                "name": name, "doc": p.doc,
                "actions": [(_action, (p, bundle, upstream_of(p, plans), cache, force_it))],
                "clean": [(_clean, (p, state))],
                "task_dep": list(p.upstream),
                "uptodate": [Fresh(p, bundle.root, state, memo, cache, force_it)],
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
        for basename, name in broken_names(spec):
            groups.setdefault(basename, []).append({
                "name": name, "doc": f"BROKEN SPEC {spec.spec_path.name}: run `kiln validate`",
                "actions": [(_broken_action, (spec,))], "verbosity": 2})


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


_BASE_STAGES = ("weights", "tokenizer", "labels", "thresholds")


def broken_names(spec: BrokenSpec) -> list[tuple[str, str]]:
    """(stage, name) of the tasks the spec would have if it validated, as far as its text says,
    so `doit list` shows the same task set when a spec breaks: the stages (STAGES) of the
    backends it enables that this host builds (one that `needs_gpu` under its section needs a
    usable GPU), a `package:<name>-<backend>` each, the image tasks it asks for (a test under
    `test: auto` needs a container engine). Stages of other task kinds are left out."""
    from ..backends import IMAGE_DEFAULT, backends
    from ..spec.loader import spec_data
    from ..stages import trt
    from ..stages.engine import engine_hint

    data = spec_data(spec.spec_path) or {}
    raw = _mapping(data.get("backends"))
    installed = backends()
    on = {b: _mapping(raw[b]) for b in installed if b in raw}
    on = {b: v for b, v in on.items() if installed[b].enabled(v)
          and not (installed[b].needs_gpu(v) and trt.host_facts().unusable())}
    backends_on = list(on)
    image = data.get("image") if isinstance(data.get("image"), dict) else None
    publish = _mapping(data.get("publish"))
    served = image.get("backend", IMAGE_DEFAULT) if image is not None else None
    tested = image is not None and (image.get("test", "auto") == "required" or
                                    (image.get("test", "auto") == "auto" and not engine_hint()))
    per_backend = {
        "package": backends_on,
        "image": [b for b in backends_on if b == served or publish.get("oci") is not None],
        "imagetest": [b for b in backends_on if b == served and tested],
    }
    out = [(stage, spec.name) for stage in _BASE_STAGES]
    out += [(stage, spec.name) for b in backends_on for stage in installed[b].STAGES]
    out += [(stage, f"{spec.name}-{b}") for stage, bs in per_backend.items() for b in bs]
    return out + [("publish", spec.name), ("build", spec.name)]


def doit_namespace(bundles: list[Bundle], root: Path, skip: frozenset[str] = frozenset(),
                   to: str | None = None, cache: CacheConfig | None = None,
                   broken: Sequence[BrokenSpec] = (),
                   force: Sequence[str] | None = None) -> dict[str, Any]:
    """What dodo.py exposes: DOIT_CONFIG plus one `task_<stage>` generator per stage. `force`:
    the tasks to rerun whatever their stamps say; None reads doit's command line (`-a`)."""
    state = Layout(root).state
    state.mkdir(parents=True, exist_ok=True)
    namespace: dict[str, Any] = {"DOIT_CONFIG": {
        "backend": DB_BACKEND, "dep_file": str(usable(state / "doit.sqlite3")),
        "default_tasks": ["build"], "verbosity": 2,
    }}
    if force is None:  # doit's own command line (dodo.py)
        clean.FORGETTING["on"] = clean.doit_command(sys.argv[1:]) in ("forget", "clean")
    with held_until_work():
        groups = task_dicts(bundles, skip, to, cache,
                            always_execute() if force is None else force)
        add_broken(groups, broken)
        verdicts(state)
    for basename in (*STAGES, "publish", "build"):
        if basename in groups:
            namespace[f"task_{basename}"] = _generator(basename, groups[basename])
    return namespace


def run_doit(bundles: list[Bundle], tasks: list[str], jobs: int = 1,
             skip: frozenset[str] = frozenset(), to: str | None = None,
             cache: CacheConfig | None = None, broken: Sequence[BrokenSpec] = (),
             force: Sequence[str] = (), quiet: bool = False) -> int:
    """Run doit over the bundles' task graph; returns doit's exit status (non-zero: a task
    failed). `force`: tasks (names, stages or patterns; ALL) rerun whatever their stamps say.
    `quiet`: a line per task that ran, the tasks' own output only when one fails."""
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    try:
        namespace = doit_namespace(bundles, bundles[0].root, skip, to, cache, broken, force)
        args = ["run"] + (["-n", str(jobs), "-P", "process"] if jobs > 1 else [])
        if quiet:
            args += ["--verbosity", "0", "--reporter", "executed-only"]
        status: int = DoitMain(ModuleTaskLoader(namespace)).run(args + tasks)
    finally:
        release()
    return status


def _doit_var(name: str, argv: list[str] | None) -> list[str]:
    """Values of `name=value` words on doit's command line (doit's own `get_var` convention)."""
    argv = sys.argv if argv is None else argv
    return [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]


def always_execute(argv: list[str] | None = None) -> Sequence[str]:
    """ALL when doit's own command line asks to run every selected task (`doit -a`,
    `doit run --always-execute`), else nothing: doit then skips the uptodate checks, and the
    actions must not find the stamps up to date either."""
    argv = sys.argv[1:] if argv is None else argv
    return ALL if any(a in ("-a", "--always-execute") for a in argv) else ()


def skipped_backends(argv: list[str] | None = None) -> frozenset[str]:
    """Backends skipped for this run: `doit ... skip=onnx` or KILN_SKIP=onnx (comma-separated)."""
    values = [*_doit_var("skip", argv), os.environ.get("KILN_SKIP", "")]
    return frozenset(s.strip() for v in values for s in v.split(",") if s.strip())


def publish_target(argv: list[str] | None = None) -> str | None:
    """Destination override for `publish:<name>`: `doit publish to=local` (or any URI template)."""
    values = _doit_var("to", argv)
    return values[-1] if values else None
