"""The action-cache key of a task: the digest of everything that shapes its output.

    key = sha256(canonical JSON of {
        stage, task, stage CODE_VERSION, modelkiln version, params digest,
        input file digests (the same snapshot the stamp records),
        per upstream task: the digest of what this task can read from it
            (its outputs' aggregate, its input digests and its report, as its stamp keeps them),
        versions of the distributions that shape the output,
        the platform class, for stages whose output depends on the machine })

A stage declares the last two as members of its module (stages.base.Stage): `TOOLS`
(distribution names; `tools_for(plan)` where they depend on the plan) and `PLATFORM` ("cpu-int8":
int8 kernels differ by CPU instruction set, so do parity figures; "gpu": a TensorRT engine is
built for one GPU model and driver; `platform_class(plan)` for a class of its own). The task id is
part of the key: two bundles never share an action record even where their stages would agree
(their blobs are still shared, being content-addressed).
"""
from __future__ import annotations

import functools
import os
import platform
from collections.abc import Mapping
from typing import Any

from .. import __version__
from ..artifacts.digest import canonical_json, sha256_bytes
from ..stages.base import PlanPlatform, PlanTools, StagePlan
from .plans import STAGES

KEY_VERSION = 2  # 2: schema-2 records (bound to their task and key); schema-1 ones go unread
PLATFORM_ENV = "KILN_PLATFORM_CLASS"
GPU_ENV = "KILN_GPU_CLASS"

def stage_tools(plan: StagePlan) -> tuple[str, ...]:
    stage = STAGES[plan.stage]
    if isinstance(stage, PlanTools):  # package: tools per backend, also in its manifest
        return tuple(stage.tools_for(plan))
    return tuple(stage.TOOLS)


@functools.cache
def tool_version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


@functools.cache
def cpu_class() -> str:
    """Machine and the widest int8 dot-product instruction set the CPU offers: what onnxruntime's
    kernels dispatch on, so two machines of one class compute the same int8 results."""
    machine = platform.machine().lower()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    for flag, name in (("avx512_vnni", "avx512vnni"), ("avx512bw", "avx512"),
                       ("avx_vnni", "avxvnni"), ("avx2", "avx2"), ("i8mm", "i8mm"),
                       ("asimddp", "dotprod")):
        if flag in flags:
            return f"{machine}-{name}"
    return f"{machine}-base"


@functools.cache
def gpu_class() -> str:
    """GPU model and compute capability (TensorRT engines are built for one), or 'none'."""
    from ..errors import KilnError
    from ..proc import run

    try:
        out = run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version",
                   "--format=csv,noheader"], timeout=10).stdout
    except KilnError:
        return "none"
    return out.strip().splitlines()[0].replace(" ", "_") if out.strip() else "none"


def platform_class(kind: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The platform class a stage's output depends on (None: it depends on none)."""
    if kind is None:
        return None
    env = os.environ if env is None else env
    if kind == "gpu":
        return env.get(GPU_ENV) or gpu_class()
    return env.get(PLATFORM_ENV) or cpu_class()


def portable(inputs: Mapping[str, str]) -> dict[str, str]:
    """Input digests named the same on every machine: files inside the project by their relative
    path; files outside it (modelkiln's own runtime sources, which the image stage reads) by their
    content alone, since where a runner installed modelkiln must not change the key. Upstream
    marks (`@task`) are dropped: upstream tasks enter the key through their identities."""
    out: dict[str, str] = {}
    for k, v in inputs.items():
        if k.startswith("@"):
            continue
        out[f"external:{v}" if k.startswith("/") else k] = v
    return dict(sorted(out.items()))


def upstream_identity(outputs_aggregate: str, inputs: Mapping[str, str],
                      report: Mapping[str, Any]) -> str:
    """What a downstream task can read from an upstream one, as one digest. Computed the same way
    from a stamp (built or restored) and from an action record (plan on a cold runner)."""
    plain = portable(inputs)
    return sha256_bytes(canonical_json({"outputs": outputs_aggregate, "inputs": plain,
                                        "report": dict(report)}))


def material(plan: StagePlan, inputs: Mapping[str, str],
             upstream: Mapping[str, str]) -> dict[str, Any]:
    """The key material: `inputs` are input file digests (no upstream marks), `upstream` maps
    each upstream task to its `upstream_identity`."""
    stage = STAGES[plan.stage]
    return {
        "key_version": KEY_VERSION, "modelkiln": __version__, "task": plan.task,
        "stage": plan.stage, "code": str(stage.CODE_VERSION),
        "params_digest": plan.params_digest,
        "inputs": portable(inputs),
        "upstream": dict(sorted(upstream.items())),
        "tools": {d: tool_version(d) for d in stage_tools(plan)},
        # a stage may name its own class (trt: architecture, TensorRT version, CUDA flavour)
        "platform": stage.platform_class(plan) if isinstance(stage, PlanPlatform)
        else platform_class(stage.PLATFORM),
    }


def action_key(key_material: Mapping[str, Any]) -> str:
    return sha256_bytes(canonical_json(dict(key_material)))
