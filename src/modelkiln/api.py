"""One function per verb. Returns data, raises KilnError; never prints (cli.py does).

Light by construction: validate and plan import PyYAML/jsonschema at most (and not even those on
a spec-cache hit); doit and the heavy stage libraries are imported only by `build`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import sources
from .errors import KilnError, Problem, SpecError, UsageError
from .heap import long_lived
from .model import BrokenSpec, Bundle, check_unique
from .paths import Layout, project_root

if TYPE_CHECKING:  # publishing is imported when a command publishes, not when it plans; the
    from .cache import CacheConfig  # cache when a command uses it (a no-op build does not)
    from .publish.release import Release

SPEC_SUFFIXES = (".yaml", ".yml")


def discover(specs: Sequence[str | Path] = (), cwd: Path | None = None) -> list[Path]:
    """Spec files named on the command line (files or directories); default `bundles/*.yaml`."""
    cwd = cwd or Path.cwd()
    targets = [Path(s) for s in specs] or [cwd / "bundles"]
    found: list[Path] = []
    for t in targets:
        if t.is_dir():
            found += sorted(p for p in t.iterdir() if p.suffix in SPEC_SUFFIXES and p.is_file())
        elif t.exists():
            found.append(t)
        elif specs:  # named on the command line: a usage error (64), like a misspelt option
            raise UsageError(f"{t}: no such spec file or directory; name bundles/*.yaml files "
                             "or a directory holding them")
        else:
            raise KilnError(f"{t}: no such spec file or directory; name a bundles/*.yaml file")
    if not found:
        raise KilnError(f"no specs found under {', '.join(map(str, targets))}; add bundles/<name>.yaml")
    return found


class _Loader:
    """Specs -> Bundles for one load: a converted bundle is reused from `.kiln/bundles/` while
    its spec and every file its checks saw are unchanged (model.cache), so a no-op reads no
    label file, config or safetensors header; the rest are parsed (spec cache) and converted."""

    def __init__(self, paths: Sequence[Path]):
        from .artifacts.digest import stat_cache
        from .model.cache import BundleCache
        from .spec import LOADER_VERSION, schema_digest

        self.layout = Layout(project_root(Path(paths[0])))
        self.stats = stat_cache(self.layout.state)
        salt = f"bundle-schema:{schema_digest('bundle')}:loader:{LOADER_VERSION}"
        self.cache = BundleCache(self.layout.state, self.stats, salt)

    def docs(self, paths: Sequence[Path]) -> list[Any]:
        from .spec import load_documents

        return load_documents(list(paths), cache_dir=self.layout.state, stat_cache=self.stats)

    def convert(self, paths: Sequence[Path]) -> dict[Path, Bundle]:
        """Convert specs the cache did not answer; SpecError with every problem of all of them."""
        from .model.cache import convert

        # each spec's digest before its bytes are read: a spec edited in between is not kept
        digests = [self.cache.spec_digest(os.path.abspath(p)) for p in paths]
        out: dict[Path, Bundle] = {}
        problems: list[Problem] = []
        for path, doc, digest in zip(paths, self.docs(paths), digests, strict=True):
            try:
                out[path] = convert(doc, self.cache, digest)
            except SpecError as exc:
                problems += exc.problems
        if problems:
            raise SpecError(problems)
        return out

    def check_unique(self, pairs: Sequence[tuple[Path, Bundle]]) -> None:
        """Two specs may not claim one name; their documents are loaded only when two do."""
        names = [b.name for _, b in pairs]
        if len(set(names)) != len(names):
            check_unique(list(zip(self.docs([p for p, _ in pairs]), [b for _, b in pairs],
                                  strict=True)))


def load_bundles(paths: Sequence[Path]) -> list[Bundle]:
    """Load, schema-check and convert every spec; one SpecError listing every problem of every file."""
    with long_lived():
        loader = _Loader(paths)
        found = {p: b for p in paths if (b := loader.cache.lookup(p)) is not None}
        found.update(loader.convert([p for p in paths if p not in found]))
    pairs = [(p, found[p]) for p in paths]
    loader.check_unique(pairs)
    loader.stats.save()
    return [b for _, b in pairs]


def load_bundles_partial(paths: Sequence[Path]) -> tuple[list[Bundle], list[BrokenSpec]]:
    """Like `load_bundles`, but a spec that does not validate is set aside as a `BrokenSpec`
    instead of stopping every other one: the graph gives it placeholder tasks that fail with its
    problems, so one broken spec in fifty blocks only its own bundle."""
    from .spec import spec_name

    pairs: list[tuple[Path, Bundle]] = []
    first: dict[str, tuple[Path, Bundle]] = {}  # bundle name -> the spec that claimed it
    broken: list[tuple[Path, list[Problem]]] = []
    with long_lived():
        loader = _Loader(paths)
        for path in paths:
            try:
                bundle = loader.cache.lookup(path) or loader.convert([path])[path]
                if bundle.name in first:  # a second spec of one name: the later one is broken
                    loader.check_unique([first[bundle.name], (path, bundle)])
                first[bundle.name] = (path, bundle)
                pairs.append((path, bundle))
            except SpecError as exc:
                broken.append((Path(path), exc.problems))
    loader.stats.save()
    bundles = [b for _, b in pairs]
    taken = {b.name for b in bundles}
    out: list[BrokenSpec] = []
    for path, problems in broken:
        name = next((n for n in (spec_name(path), path.stem) if n and n not in taken), None)
        taken.add(name or "")
        out.append(BrokenSpec(name or "", path, tuple(problems)))  # "" : no task name of its own
    return bundles, out


def validate(specs: Sequence[str | Path] = ()) -> list[Bundle]:
    """`kiln validate`: every spec loads, matches the schema and passes the cross-field checks."""
    return load_bundles(discover(specs))


@dataclass(frozen=True)
class PlanRow:
    task: str
    run: bool  # out of date here: it will be restored from the cache or run
    reasons: tuple[str, ...]
    action: str = "run"  # ok | hit (restored from the action cache) | run
    restore_bytes: int = 0


def cache_config(specs: Sequence[str | Path] = (), uri: str | None = None,
                 write: bool | None = None) -> CacheConfig:
    """The action cache for the project of `specs`: --cache/--cache-write over the environment
    over [tool.modelkiln] over the embedded file://<project>/.kiln/cache."""
    from .cache import resolve

    targets = [Path(s) for s in specs] or [Path.cwd()]
    return resolve(project_root(targets[0]), uri, write)


def plan(specs: Sequence[str | Path] = (), skip: frozenset[str] = frozenset(),
         cache: CacheConfig | None = None) -> list[PlanRow]:
    """`kiln plan`: every task, whether it is up to date, a cache hit or would run, and why.
    Runs nothing, downloads no outputs, imports no doit."""
    from .graph.planner import plan_tasks

    return [PlanRow(t.task, t.run, t.reasons, t.action, t.restore_bytes)
            for t in plan_tasks(load_bundles(discover(specs)), skip, cache)]


def plan_partial(specs: Sequence[str | Path] = (), skip: frozenset[str] = frozenset(),
                 cache: CacheConfig | None = None) -> tuple[list[PlanRow], list[BrokenSpec]]:
    """Like `plan`, but a spec that does not validate is returned beside the plan of every
    other one instead of blanking it (`kiln plan` prints both and exits 3)."""
    from .graph.planner import plan_tasks

    bundles, broken = load_bundles_partial(discover(specs))
    return [PlanRow(t.task, t.run, t.reasons, t.action, t.restore_bytes)
            for t in plan_tasks(bundles, skip, cache)], broken


def plan_markdown(specs: Sequence[str | Path] = (), skip: frozenset[str] = frozenset(),
                  cache: CacheConfig | None = None,
                  base: str | None = None) -> tuple[str, list[BrokenSpec]]:
    """`kiln plan --markdown`: (the plan as a pull-request comment, with deltas against `base`
    and the problems of the specs that do not validate at its top; those specs). A `base` git
    does not know is a usage error (64)."""
    from .graph.review import plan_markdown as render

    paths = discover(specs)
    if base is not None:
        from .graph.changed import check_ref

        check_ref(project_root(Path(paths[0])), base)
    bundles, broken = load_bundles_partial(paths)
    return render(bundles, skip, cache, base, broken), broken


def changed(ref: str | None, specs: Sequence[str | Path] = (),
            last_good: str | None = None) -> tuple[list[str], str]:
    """`kiln changed REF`: (names of the bundles whose spec or inputs differ from git `ref`, or
    from the tag `last_good` moved after each successful publish; the base used). Decided from
    specs, git and the inputs that exist: a spec whose inputs are absent here (a fresh clone)
    or that does not validate is decided from the paths its text names (graph.changed)."""
    from .graph.changed import changed as changed_since
    from .graph.changed import resolve_base

    paths = discover(specs)
    root = project_root(Path(paths[0]))
    base = resolve_base(root, ref, last_good)
    bundles, broken = load_bundles_partial(paths)
    return changed_since(bundles, broken, root, base), base


def build(specs: Sequence[str | Path] = (), tasks: Sequence[str] = (), jobs: int = 1,
          skip: frozenset[str] = frozenset(), to: str | None = None,
          cache: CacheConfig | None = None, force: bool = False, quiet: bool = False) -> int:
    """`kiln build`: run the doit graph for the given tasks (default: build every bundle).
    `force`: rerun the given tasks (without tasks: every task of the bundles) whatever their
    stamps say, running their stages rather than restoring them from the cache.

    Returns doit's exit status (0 ok, non-zero when a task failed; 2 when a remote source's
    bytes differ from its lock); doit reports progress itself.
    """
    from .graph.tasks import ALL, run_doit

    bundles, broken = load_bundles_partial(discover(specs))
    if not bundles:
        raise SpecError([p for b in broken for p in b.problems])
    if tasks:  # doit's own answer to a misspelt name is exit 3 and a `kiln list` there is not
        from .graph.selection import check_selection, task_names

        check_selection(tasks, task_names(bundles, broken, skip))
    state = Layout(bundles[0].root).state
    sources.drifted(state, clear=True)
    status = run_doit(bundles, list(tasks or [f"build:{b.name}" for b in bundles]), jobs, skip, to,
                      cache, broken=broken, force=(tuple(tasks) or ALL) if force else (), quiet=quiet)
    if status and sources.drifted(state):  # a remote source differs from its lock: exit 2
        return 2
    if broken and not tasks:  # the healthy bundles are built; the broken specs still fail the run
        raise SpecError([p for b in broken for p in b.problems])
    return status


def clean(names: Sequence[str] = (), specs: Sequence[str | Path] = ()) -> list[tuple[str, list[Path]]]:
    """`kiln clean [BUNDLE ...]`: remove what the build wrote for each bundle (build/<name>/,
    dist/<name>/; default: every bundle of the specs and every one with something built), so the
    next build runs every task. Names neither a spec nor the build knows are a usage error."""
    import difflib

    from .graph.clean import built_bundles, clean_bundle
    from .graph.plans import plan_bundle

    paths = discover(specs)
    root = project_root(Path(paths[0])) if paths else project_root()
    bundles, broken = load_bundles_partial(paths)
    tasks = {b.name: [p.task for p in plan_bundle(b)] for b in bundles}
    known = sorted({*tasks, *(b.name for b in broken if b.name), *built_bundles(root)})
    for name in names:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean {', '.join(near)}? " if near else ""
            raise UsageError(f"clean {name}: no such bundle ({hint}the bundles are "
                             f"{', '.join(known) or 'none'})")
    return [(name, clean_bundle(root, name, tasks.get(name, ())))
            for name in dict.fromkeys(names or known)]


def publish(specs: Sequence[str | Path] = (), backends: Sequence[str] = (), *, to: str | None = None,
            force: bool = False, progress: Callable[[int], None] | None = None) -> list[Release]:
    """`kiln publish`: every built backend bundle of the specs to S3/file://, store and registry."""
    from .publish.release import refuse_locked_backends, release

    _check_backends(backends)
    run: list[tuple[Bundle, tuple[str, ...]]] = []
    for bundle in load_bundles(discover(specs)):
        chosen = tuple(backends) or built_here(bundle)
        if backends and not specs:  # every spec: `--backend onnx` means the bundles that have it
            chosen = tuple(b for b in chosen if b in bundle.backends)
        for backend in chosen:
            if backend not in bundle.backends:
                raise KilnError(f"{bundle.name}: backend {backend!r} is not enabled in "
                                f"{bundle.spec_path.name} (enabled: {', '.join(bundle.backends)})")
        if chosen:
            run.append((bundle, chosen))
    if backends and not run:
        raise KilnError(f"no spec enables {', '.join(backends)}; enable it under `backends:` "
                        "or leave --backend out")
    for bundle, chosen in run:  # a locked entry refuses the whole run before its first upload
        refuse_locked_backends(bundle, chosen)
    out = []
    for bundle, chosen in run:
        for backend in chosen:
            try:
                out.append(release(bundle, backend, to=to, force=force, progress=progress))
            except KilnError:
                _buildable_here(bundle, backend)  # not built because this host cannot: say so
                raise
    return out


def _check_backends(backends: Sequence[str]) -> None:
    """A misspelt --backend is a usage error (64), like a misspelt --skip."""
    import difflib

    from .backends import backends as installed

    BACKENDS = tuple(installed())  # modelkiln's own and installed plug-ins'
    for name in backends:
        if name not in BACKENDS:
            near = difflib.get_close_matches(name, BACKENDS, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise UsageError(f"--backend {name}: not a backend ({hint}the backends are "
                             f"{', '.join(BACKENDS)})")


def _buildable_here(bundle: Bundle, backend: str) -> None:
    """KilnError when this host does not build `backend` (a tensorrt bundle without a GPU), for
    a publish that failed: "build it first" would send the user to a build that skips it."""
    from .graph.plans import plan_bundle, skipped

    gone = skipped(plan_bundle(bundle))
    task = f"package:{bundle.name}-{backend}"
    while task in gone and gone[task].endswith(" is skipped here"):  # to the task that says why
        task = gone[task][:-len(" is skipped here")]
    why = f"{task}: {gone[task]}" if task in gone else None
    if why is not None:
        raise KilnError(f"{bundle.name}: this host does not build the {backend} bundle "
                              f"({why}); publish it from a host that builds it, or leave "
                              f"--backend {backend} out")


def built_here(bundle: Bundle) -> tuple[str, ...]:
    """The enabled backends this host builds: not the tensorrt bundle where its engine stage is
    skipped (no GPU under `when: gpu-available`)."""
    from .graph.plans import plan_bundle, skipped

    gone = skipped(plan_bundle(bundle))
    return tuple(b for b in bundle.backends if f"package:{bundle.name}-{b}" not in gone)


def bootstrap(env: Mapping[str, str] | None = None,
              progress: Callable[[int], None] | None = None) -> Any:
    """`kiln bootstrap`: fetch, verify and swap in the bundle named by MODEL_BACKEND and friends."""
    from .runtime import bootstrap as run_bootstrap

    return run_bootstrap(env, progress)


def image_lock(specs: Sequence[str | Path] = ()) -> list[tuple[str, Path]]:
    """`kiln image-lock`: resolve each spec's serving environment into its lock file (pip, wheels
    only, a sha256 per wheel); returns (bundle, lock path) for the specs that have an image."""
    from .stages.image_env import write_lock

    return [(b.name, write_lock(b)) for b in load_bundles(discover(specs))
            if b.image is not None and b.image.libraries == "lock"]


def make_base(out: Path, suite: str = "bookworm",
              include: Sequence[str] = ("python3", "ca-certificates"), force: bool = False) -> str:
    """`kiln base DIR`: a Debian base with python3 from Debian's packages (mmdebstrap) as a
    one-layer OCI layout in DIR; returns the image manifest's digest. A DIR that already holds
    one is kept (a rebuild may pick up newer packages, so a new digest) unless `force`."""
    from .artifacts.oci.layout import OciLayout
    from .artifacts.oci.rootfs import build_debian_base

    if not force and (out / "index.json").is_file():
        return OciLayout(out).find("base").digest
    return build_debian_base(out, suite, tuple(include))
