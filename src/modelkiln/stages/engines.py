"""engines: this host's TensorRT engine plus the same model's engines other runners built.

Output (`build/<name>/engines/`): `engines/sm<cc>/{model.plan, engine.json}` and
`parity/sm<cc>/{engine.npy, onnx.npy}` for every architecture the tensorrt bundle will hold, so
`trtparity` gates each engine at the shipped thresholds and `package` packs them all; and
`left_out.json` when an engine of the index was refused (platform -> why).

An engine is built only on a runner with the matching GPU, so one runner's `trt` output holds one
engine. The graph finds the others in the action cache's engine index (entries of this engine's
family: same ONNX model, profiles and builder settings), fetches them verified into directories
under `.kiln/engines/`, and hands them over in the plan (`foreign`); their index digests are in
this task's parameters, so an engine built elsewhere later re-runs this task and what reads it.
This stage never touches the cache itself: stages sit below it.

Each foreign set is checked before it is merged: one readable `engine.json` whose key digest
holds, the same family as this host's engine, a plan file of the size and sha256 the sidecar
names, its parity logits, and an architecture not already taken (this host's own engine wins its
architecture; among other runners' the first by platform name). A set that fails is left out with
a warning, never packaged; `trt.merge` then copies the rest and checks them once more.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..artifacts import engine_key as ek
from ..artifacts import names
from ..artifacts.digest import StatCache
from ..errors import BuildError, KilnError
from ..model.bundle import Bundle
from ..paths import Layout
from . import trt
from .base import Report, RunContext, StagePlan, params, stage_plan

NAME = "engines"
DOC = "this host's TensorRT engine plus the same model's engines from other runners (cache)"
READS: tuple[str, ...] = ("trt",)
WRITES: tuple[str, ...] | None = ("engines/sm*/*", "parity/sm*/*")
OPTIONAL: tuple[str, ...] = ("left_out.json",)  # only when an index engine was refused
PLATFORM: str | None = None
CODE_VERSION = "1"
TOOLS: tuple[str, ...] = ()
STAGE = "engines"
FOREIGN = "foreign"  # plan.extra: fetched engine sets, one directory per line
LEFT_OUT = "left_out"  # plan.extra: JSON {platform: why} of index entries the graph refused
LEFT_OUT_FILE = "left_out.json"  # output: every engine left out, and why


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    if bundle.tensorrt is None:
        return []
    return [stage_plan(
        bundle, layout, STAGE,
        doc=f"gather {bundle.name}'s TensorRT engines: this host's and, from the cache, the "
            "same model's engines built on other GPUs",
        upstream=("trt",), params=params(CODE_VERSION), backend="tensorrt")]


def _refusal(directory: Path, family: str, taken: set[str],
             stat: StatCache) -> tuple[str | None, str]:
    """(why the engine set in `directory` cannot join, its architecture)."""
    try:
        sides = trt.engine_sets(directory)
    except KilnError as exc:
        return str(exc), ""
    if len(sides) != 1:
        return f"it holds {len(sides)} engines, not one", ""
    side = sides[0]
    sm = Path(side["plan"]).parent.name
    plan_file = directory / side["plan"]
    if side["family_sha256"] != family or ek.family(side["key"]) != family:
        return "it was built from another model or with other settings (engine family differs)", sm
    if side["plan"] != f"{names.ENGINES_DIR}/{sm}/{names.ENGINE_PLAN}" or not plan_file.is_file():
        return f"its engine file {side['plan']} is not where engine.json says", sm
    if plan_file.stat().st_size != side["plan_size"] \
            or stat.digest(plan_file) != side["plan_sha256"]:
        return "its engine file differs from the size and sha256 in its engine.json", sm
    if not all((directory / trt.PARITY_DIR / sm / f).is_file() for f in ("engine.npy", "onnx.npy")):
        return f"its parity logits ({trt.PARITY_DIR}/{sm}/) are missing", sm
    if sm in taken:
        return f"this bundle already holds an engine for {sm}", sm
    return None, sm


def run(ctx: RunContext) -> Report:
    local = ctx.up("trt")
    mine = trt.engine_sets(local)
    if len(mine) != 1:
        raise BuildError(f"the trt stage recorded {len(mine)} engines, not one; rebuild trt")
    family = mine[0]["family_sha256"]
    taken = {Path(mine[0]["plan"]).parent.name}
    sources: dict[str, Path] = {next(iter(taken)): local}
    left_out: dict[str, str] = json.loads(ctx.plan.get(LEFT_OUT) or "{}")
    for line in (ctx.plan.get(FOREIGN) or "").splitlines():
        platform, _, where = line.partition("=")
        why, sm = _refusal(Path(where), family, taken, ctx.cache)
        if why:
            ctx.log(f"kiln: warning: {ctx.plan.task}: the engine built on {platform} is left "
                    f"out: {why}")
            left_out[platform] = why
            continue
        taken.add(sm)
        sources[sm] = Path(where)
    sides = trt.merge(list(sources.values()), ctx.out)
    for sm, src in sorted(sources.items()):
        shutil.copytree(src / trt.PARITY_DIR / sm, ctx.out / trt.PARITY_DIR / sm)
    ctx.log(f"{ctx.plan.task}: {len(sides)} engine(s): "
            + ", ".join(Path(s["plan"]).parent.name for s in sides))
    report: Report = {"engines": {Path(s["plan"]).parent.name: {
        **trt.describe(s), "plan_size": s["plan_size"], "family_sha256": s["family_sha256"]}
        for s in sides}}
    if left_out:  # also a file, so that what reads this stage sees the change (not packed)
        report[LEFT_OUT] = dict(sorted(left_out.items()))
        (ctx.out / LEFT_OUT_FILE).write_text(json.dumps(report[LEFT_OUT], indent=2) + "\n")
    return report
