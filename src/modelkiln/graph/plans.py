"""Bundle -> the list of StagePlans for it. Pure: reads no file contents, imports no heavy library."""
from __future__ import annotations

from ..model.bundle import Bundle
from ..stages.base import Layout, StagePlan, module

# Order matters only for readability of `kiln plan`; dependencies come from each plan's upstream.
STAGES = ("weights", "tokenizer", "labels", "thresholds", "onnx", "int8", "parity", "smoke",
          "package")


def plan_bundle(bundle: Bundle, skip: frozenset[str] = frozenset()) -> list[StagePlan]:
    """Every task of one bundle. `skip` drops backends ('onnx') for this run only."""
    layout = Layout(bundle.root)
    plans: list[StagePlan] = []
    for stage in STAGES:
        try:
            mod = module(stage)
        except ModuleNotFoundError as exc:
            if exc.name == f"modelkiln.stages.{stage}":
                continue  # a stage this version does not ship
            raise
        # A skipped backend takes its own stages (export, quantize, gates, package) with it.
        plans.extend(p for p in mod.plan(bundle, layout) if p.backend not in skip)
    return plans


def upstream_of(plan: StagePlan, plans: list[StagePlan]) -> tuple[StagePlan, ...]:
    by_task = {p.task: p for p in plans}
    return tuple(by_task[t] for t in plan.upstream)
