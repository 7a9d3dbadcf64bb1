"""The `toystamp` stage: writes toy.txt (the bundle's labels and the spec's greeting)."""
from __future__ import annotations

import json
from typing import Any

from modelkiln.artifacts import names
from modelkiln.model.bundle import Bundle
from modelkiln.paths import Layout
from modelkiln.stages.base import RunContext, StagePlan, params, stage_plan

NAME = "toystamp"
DOC = "write toy.txt for the toy backend"
CODE_VERSION = "1"
READS: tuple[str, ...] = ("labels",)
WRITES: tuple[str, ...] | None = ("toy.txt",)
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
TOOLS: tuple[str, ...] = ()
PLATFORM: str | None = None


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    if "toy" not in bundle.backends:
        return []
    section = json.loads(bundle.section("backends")).get("toy") or {}
    return [stage_plan(bundle, layout, NAME, doc=f"stamp {bundle.name} for the toy backend",
                       params=params(CODE_VERSION, toy=section), upstream=("labels",),
                       backend="toy")]


def run(ctx: RunContext) -> dict[str, Any]:
    labels = json.loads((ctx.up("labels") / names.LABEL_ORDER).read_bytes())
    section = json.loads(ctx.bundle.section("backends")).get("toy") or {}
    greeting = section.get("greeting", "hello")
    (ctx.out / "toy.txt").write_text(f"{greeting} {ctx.bundle.name}: {len(labels)} labels\n")
    ctx.log(f"{ctx.plan.task}: wrote toy.txt")
    return {"labels": len(labels)}
