"""Bundle -> the list of StagePlans for it. Pure: reads no file contents, imports no heavy library.

`STAGES` is the explicit table of stage modules, in the order `kiln plan` lists them (dependencies
come from each plan's `upstream`). Stage modules import their heavy libraries inside `run`, so
importing the table is cheap.
"""
from __future__ import annotations

from types import ModuleType

from ..model.bundle import Bundle
from ..paths import Layout
from ..stages import (
    image,
    int8,
    labels,
    onnx,
    package,
    parity,
    smoke,
    thresholds,
    tokenizer,
    weights,
)
from ..stages.base import StagePlan

STAGES: dict[str, ModuleType] = {
    "weights": weights,
    "tokenizer": tokenizer,
    "labels": labels,
    "thresholds": thresholds,
    "onnx": onnx,
    "int8": int8,
    "parity": parity,
    "smoke": smoke,
    "package": package,
    "image": image,
}


def plan_bundle(bundle: Bundle, skip: frozenset[str] = frozenset()) -> list[StagePlan]:
    """Every task of one bundle. `skip` drops backends ('onnx') for this run only."""
    layout = Layout(bundle.root)
    plans: list[StagePlan] = []
    for stage in STAGES.values():
        # A skipped backend takes its own stages (export, quantize, gates, package) with it.
        plans.extend(p for p in stage.plan(bundle, layout) if p.backend not in skip)
    return plans


def upstream_of(plan: StagePlan, plans: list[StagePlan]) -> tuple[StagePlan, ...]:
    by_task = {p.task: p for p in plans}
    return tuple(by_task[t] for t in plan.upstream)
