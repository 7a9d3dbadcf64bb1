"""labels: `label_order.json` and `registry_label_fields.json`, checked against the model's head.

Validation already compared the spec's label files with the checkpoint; this stage checks them
again against the *converted* config, so a bundle can never pair labels with the wrong head.
"""
from __future__ import annotations

import json

from ..artifacts import names
from ..errors import BuildError
from ..model.bundle import Bundle
from ..model.files import BadFile, expect_object, expect_strings, head_labels, read_json
from ..paths import Layout
from .base import Report, RunContext, StagePlan, params, stage_plan

NAME = "labels"
DOC = "write label order and registry label fields, checked against the model head"
READS: tuple[str, ...] = ("weights",)
WRITES: tuple[str, ...] | None = (names.LABEL_ORDER, names.LABEL_FIELDS)
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
TOOLS: tuple[str, ...] = ()
PLATFORM: str | None = None
CODE_VERSION = "1"


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    return [stage_plan(
        bundle, layout, "labels", doc=f"write {bundle.name}'s label order and registry label fields",
        inputs=(bundle.labels.order, bundle.labels.fields), upstream=("weights",),
        params=params(CODE_VERSION))]


def _dump(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def run(ctx: RunContext) -> Report:
    try:
        order = expect_strings(read_json(ctx.bundle.labels.order), str(ctx.bundle.labels.order),
                               '["cpt_code", "laterality"]')
        fields = expect_object(read_json(ctx.bundle.labels.fields), str(ctx.bundle.labels.fields),
                               '{"label": {...}, ...}')
        config = ctx.up("weights") / names.CONFIG
        head = head_labels(read_json(config), str(config))
    except BadFile as exc:
        raise exc.build_error() from None
    if head != order:
        raise BuildError(f"label_order {order} does not match the model's id2label {head}; list "
                         "labels in the model's output order")
    if set(fields) != set(order):
        raise BuildError(f"{ctx.bundle.labels.fields}: must have one entry per label in label_order")
    (ctx.out / names.LABEL_ORDER).write_text(_dump(order))
    (ctx.out / names.LABEL_FIELDS).write_text(_dump({k: fields[k] for k in order}))
    return {"labels": len(order)}
