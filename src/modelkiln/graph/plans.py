"""Bundle -> the list of StagePlans for it. Pure: reads no file contents, imports no heavy library.

`STAGES` is the table of stages (`stages.base.Stage`), in the order `kiln plan` lists them
(dependencies come from each plan's `upstream`). It is built from the `modelkiln.stages`
entry-point group (modelkiln's own stages register there like a third party's, see
modelkiln.plugins), ordered by what each stage `READS`: modelkiln's own in their fixed order, a
plug-in stage after the stages it reads and before `package` unless it reads a later one.
`BUILTIN_STAGES` is the same table as code, so mypy checks every built-in module against the
protocol. Stage modules import their heavy libraries inside `run`, so importing the table is cheap.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import cast

from .. import plugins, sources
from ..backends import backends, needed_by
from ..errors import UsageError
from ..model.bundle import Bundle
from ..paths import Layout
from ..stages import (
    embed_parity,
    engines,
    gen_parity,
    image,
    image_processor,
    imagetest,
    int8,
    kinds,
    labels,
    ner_parity,
    onnx,
    package,
    parity,
    smoke,
    thresholds,
    tokenizer,
    trt,
    trtparity,
    vision_parity,
    weights,
)
from ..stages.base import Stage, StagePlan

BUILTIN_STAGES: dict[str, Stage] = {
    "weights": weights,
    "tokenizer": tokenizer,
    "image_processor": image_processor,
    "labels": labels,
    "thresholds": thresholds,
    "onnx": onnx,
    "int8": int8,
    "parity": parity,
    "embed_parity": embed_parity,
    "vision_parity": vision_parity,
    "gen_parity": gen_parity,
    "ner_parity": ner_parity,
    "smoke": smoke,
    "trt": trt,
    "engines": engines,
    "trtparity": trtparity,
    "package": package,
    "image": image,
    "imagetest": imagetest,
}


def ordered(stages: dict[str, Stage]) -> dict[str, Stage]:
    """`stages` in dependency order (a stage after every stage it READS that is in the table);
    among those ready, built-ins in their fixed order, a plug-in just before `package`, ties by
    name. A cycle among plug-ins keeps the rest of them in name order after the others."""
    fixed = list(BUILTIN_STAGES)
    slot = fixed.index("package") - 0.5

    def rank(name: str) -> tuple[float, str]:
        return (float(fixed.index(name)) if name in fixed else slot, name)

    left = dict(stages)
    out: dict[str, Stage] = {}
    while left:
        ready = [n for n, s in left.items() if not any(r in left and r != n for r in s.READS)]
        pick = min(ready or left, key=rank)
        out[pick] = left.pop(pick)
    return out


def load_stages() -> dict[str, Stage]:
    """The installed stages (see the module doc); a broken plug-in is warned about and left out."""
    found = {name: cast(Stage, obj)
             for name, obj in plugins.loaded(plugins.STAGES, BUILTIN_STAGES).items()}
    return ordered(found)


STAGES: dict[str, Stage] = load_stages()


def plan_bundle(bundle: Bundle, skip: frozenset[str] = frozenset()) -> list[StagePlan]:
    """Every task of one bundle. `skip` drops backends ('onnx') for this run only."""
    check_skip(skip)
    sources.pins.register_lock(bundle.spec_path)  # remote inputs: local paths, locked digests
    layout = Layout(bundle.root)
    skip = needed_by(skip)  # a backend built from a skipped one (tensorrt from onnx) goes too
    plans: list[StagePlan] = []
    by_stage: dict[str, list[StagePlan]] = {}
    for name, stage in STAGES.items():
        if not kinds.planned(bundle, name):  # a task kind's stage set leaves this one out
            by_stage[name] = []
            continue
        # package's inputs are its packed stages' inputs: handed over, not planned twice
        found = package.plan(bundle, layout, by_stage) if stage is package \
            else stage.plan(bundle, layout)
        why = kinds.skip_reason(bundle, name)  # e.g. no TensorRT engine for an LLM: say why
        if why is not None:
            found = [dataclasses.replace(p, extra=(*p.extra, ("skip", why))) for p in found]
        by_stage[name] = found
        # A skipped backend takes its own stages (export, quantize, gates, package) with it.
        plans.extend(p for p in found if p.backend not in skip)
    return plans


def check_skip(skip: frozenset[str]) -> None:
    """A misspelt backend (`--skip onxx`, `skip=onxx`, KILN_SKIP) would skip nothing and build
    what the user meant to leave out: a usage error, checked where every planner reads it."""
    names = tuple(backends())  # modelkiln's own and installed plug-ins'
    for name in sorted(skip - set(names)):
        near = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise UsageError(f"skip {name!r}: not a backend ({hint}the backends are "
                         f"{', '.join(names)})")


def skipped(plans: list[StagePlan]) -> dict[str, str]:
    """Tasks that do not run on this host, with the reason: a stage that says so (`trt` under
    `when: gpu-available` without a GPU) and, transitively, every task that reads one of them."""
    out: dict[str, str] = {}
    for p in plans:  # dependency order: an upstream's verdict is known before its readers'
        why = p.get("skip")
        if why is None:
            up = next((t for t in p.upstream if t in out), None)
            why = f"{up} is skipped here" if up else None
        if why is not None:
            out[p.task] = why
    return out


def upstream_of(plan: StagePlan, plans: list[StagePlan]) -> tuple[StagePlan, ...]:
    by_task = {p.task: p for p in plans}
    return tuple(by_task[t] for t in plan.upstream)
