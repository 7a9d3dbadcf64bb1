"""image_processor: an image classifier's `preprocessor_config.json`, copied and checked to load.

What a tokenizer is to a text model: how an image becomes the model's `pixel_values` (resize,
rescale, normalize). Planned only for `source.task: image-classification` (stages/kinds/vision).
"""
from __future__ import annotations

import shutil

from ..errors import BuildError
from ..model.bundle import Bundle
from ..model.files import BadFile, read_json
from ..paths import Layout
from .base import Report, RunContext, StagePlan, params, reason, stage_plan

FILE = "preprocessor_config.json"
NAME = "image_processor"
DOC = "copy and check an image classifier's image processor config"
READS: tuple[str, ...] = ()
WRITES: tuple[str, ...] | None = (FILE,)
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
TOOLS: tuple[str, ...] = ("transformers",)
PLATFORM: str | None = None
CODE_VERSION = "1"


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    from ..model.kinds import IMAGE_CLASSIFICATION

    if bundle.source.task != IMAGE_CLASSIFICATION:
        return []
    return [stage_plan(bundle, layout, "image_processor",
                       doc=f"copy and check {bundle.name}'s image processor config",
                       inputs=(bundle.source.checkpoint / FILE,), params=params(CODE_VERSION))]


def run(ctx: RunContext) -> Report:
    from transformers import AutoImageProcessor

    src = ctx.bundle.source.checkpoint / FILE
    try:
        read_json(src)
    except BadFile as exc:
        raise exc.build_error() from None
    shutil.copyfile(src, ctx.out / FILE)
    try:
        processor = AutoImageProcessor.from_pretrained(str(ctx.out))
    except Exception as exc:
        raise BuildError(f"{src}: the image processor does not load: {reason(exc)}; save it with "
                         "the model's image processor's save_pretrained") from None
    return {"class": type(processor).__name__}
