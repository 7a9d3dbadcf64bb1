"""What every stage shares: the `Stage` protocol, the pure plan it returns, the context it runs in.

A stage is one module that satisfies `Stage` (mypy checks every module the graph's table holds):
    NAME, DOC                              its task basename and the one line `doit list` shows
    CODE_VERSION: str                      bump it when the stage's output for the same inputs changes
    READS: tuple[str, ...]                 the stages whose outputs it may read (ordering of plug-ins)
    WRITES: tuple[str, ...] | None         the outputs every run writes, so a cached record must hold
                                           them: names, or patterns (`*`, `?`, `[...]` within one path
                                           segment, matching any number of files); None: unchecked
    OPTIONAL: tuple[str, ...]              outputs a run may leave out (names or patterns): a record
                                           may hold them and need not ("Dockerfile"); () for most
    TOOLS: tuple[str, ...]                 distributions whose versions shape its output (cache key)
    PLATFORM: str | None                   "cpu-int8" | "gpu" | None: the machine class it depends on
    plan(bundle, layout) -> list[StagePlan] pure: no file reads beyond listing, no heavy imports
    run(ctx: RunContext) -> Report | None  writes outputs into ctx.out (ctx.plan is the plan it runs)
Heavy libraries are imported inside `run`, never at module level. A stage whose tools or platform
class depend on the plan adds `tools_for(plan)` / `platform_class(plan)` (`PlanTools`,
`PlanPlatform`). Third-party stages register the same way as these: an entry point in the
`modelkiln.stages` group naming the module (see graph.plans and the README's "Extending modelkiln").
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypedDict, runtime_checkable

from .. import sources
from ..artifacts.digest import StatCache, canonical_json, sha256_bytes
from ..errors import BuildError
from ..model.bundle import Bundle, Onnx
from ..paths import Layout


@dataclass(frozen=True)
class StagePlan:
    """One task: what it reads, what it writes, and the part of the spec it depends on."""

    task: str  # doit task id, e.g. "weights:registry-v3"
    stage: str  # stage module name
    bundle: str
    doc: str
    out_dir: Path
    stamp: Path
    inputs: tuple[Path, ...]  # source files read (content digests tracked)
    upstream: tuple[str, ...]  # task ids whose outputs this reads
    params: str  # canonical JSON of the stage's spec section and code version
    backend: str | None = None
    extra: tuple[tuple[str, str], ...] = field(default=())  # stage-specific plain values

    @functools.cached_property  # every up-to-date check compares it; the plan never changes
    def params_digest(self) -> str:
        return sha256_bytes(self.params.encode())

    def get(self, key: str, default: str | None = None) -> str | None:
        return dict(self.extra).get(key, default)


def stage_plan(bundle: Bundle, layout: Layout, stage: str, *, doc: str, params: str,
               inputs: tuple[Path, ...] = (), upstream: tuple[str, ...] = (),
               backend: str | None = None) -> StagePlan:
    """The plan of a once-per-bundle stage: its task id, output directory and stamp follow from
    (stage, bundle); `upstream` names other stages of the same bundle."""
    return StagePlan(task=f"{stage}:{bundle.name}", stage=stage, bundle=bundle.name, doc=doc,
                     out_dir=layout.stage_dir(bundle.name, stage),
                     stamp=layout.stamp(bundle.name, stage), inputs=tuple(inputs),
                     upstream=tuple(f"{s}:{bundle.name}" for s in upstream), params=params,
                     backend=backend)


def regular_files(directory: Path) -> set[str]:
    """Names of the regular files (symlinks followed) directly in `directory`, from one listing:
    a plan that looks for a dozen possible file names lists the directory once instead of
    stat'ing each name. Empty when `directory` cannot be listed. A remote source's tree lists
    what its lock holds, fetched or not."""
    pinned = sources.pins.listing(directory)
    if pinned is not None:
        return pinned
    out: set[str] = set()
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    if entry.is_file():
                        out.add(entry.name)
                except OSError:  # a dangling or unreadable link: not a file, as Path.is_file says
                    continue
    except OSError:
        return set()
    return out


def params(code_version: str, **values: Any) -> str:
    """Canonical JSON of a stage's code version plus the spec values it depends on."""
    return canonical_json({"code": code_version, **values}).decode().strip()


def section(bundle: Bundle, key: str) -> Any:
    """One top-level spec section as plain data (for params digests only)."""
    return json.loads(bundle.section(key))


Report = dict[str, Any]  # what a stage's run() returns: JSON-able, kept in its stamp


class Stamp(TypedDict):
    """What a finished task recorded beside its outputs (the graph writes it, a stage reads its
    upstream's): the marker that its outputs are complete, and what they were built from."""

    task: str
    params_digest: str
    params: dict[str, Any]
    inputs: dict[str, str]  # project-relative path (or "@<task>") -> sha256
    outputs: dict[str, str]  # output-relative path -> sha256
    outputs_aggregate: str
    report: Report


@dataclass
class RunContext:
    """What a stage's `run` gets: its plan, the bundle, a fresh output dir, upstream outputs."""

    plan: StagePlan
    bundle: Bundle
    layout: Layout
    out: Path  # a fresh staging directory; swapped into plan.out_dir after run() returns
    upstream: dict[str, StagePlan]  # stage name -> plan, for stages this one reads
    cache: StatCache
    log: Callable[[str], None]

    @property
    def onnx(self) -> Onnx:
        """The bundle's ONNX section, for the stages that are planned only when it is enabled."""
        if self.bundle.onnx is None:
            raise BuildError(f"{self.plan.task}: needs backends.onnx, which "
                             f"{self.bundle.spec_path.name} does not enable; run `kiln plan` again")
        return self.bundle.onnx

    def up(self, stage: str) -> Path:
        """The (final) output directory of an upstream stage."""
        return self.upstream[stage].out_dir

    def up_stamp(self, stage: str) -> Stamp:
        """The stamp an upstream stage wrote: its inputs, outputs and report."""
        stamp: Stamp = json.loads(self.upstream[stage].stamp.read_bytes())
        return stamp  # the graph wrote it before this task could start


class Stage(Protocol):
    """A build stage: one module (or any object) with these members. Read-only members, so a
    module's plain constants satisfy them."""

    @property
    def NAME(self) -> str: ...
    @property
    def DOC(self) -> str: ...
    @property
    def CODE_VERSION(self) -> str: ...
    @property
    def READS(self) -> tuple[str, ...]: ...
    @property
    def WRITES(self) -> tuple[str, ...] | None: ...
    @property
    def OPTIONAL(self) -> tuple[str, ...]: ...
    @property
    def TOOLS(self) -> tuple[str, ...]: ...
    @property
    def PLATFORM(self) -> str | None: ...

    def plan(self, bundle: Bundle, layout: Layout, /) -> list[StagePlan]: ...
    def run(self, ctx: RunContext, /) -> Report | None: ...


@runtime_checkable
class PlanTools(Protocol):
    """A stage whose tools depend on the plan (package: per backend)."""

    def tools_for(self, plan: StagePlan, /) -> tuple[str, ...]: ...


@runtime_checkable
class PlanPlatform(Protocol):
    """A stage that names its own platform class (trt: architecture, TensorRT, CUDA flavour)."""

    def platform_class(self, plan: StagePlan, /) -> str: ...


def reason(exc: BaseException, limit: int = 300) -> str:
    """A library's exception as one clipped line: loaders write multi-line essays (and tracebacks
    of their own) into their messages, and a build failure must read as one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def tool_versions(*dists: str) -> dict[str, str]:
    """Installed versions of distributions, read from metadata (no import of the packages)."""
    from importlib import metadata

    out = {}
    for d in dists:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = "absent"
    return out
