"""tokenizer: the checkpoint's tokenizer files -> `tokenizer/`, checked to load as a fast tokenizer.

The files are copied byte for byte (not re-saved), so the bundle carries exactly what was trained.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import BuildError
from ..model.bundle import Bundle
from ..model.files import BadFile, read_json
from ..paths import Layout
from .base import Report, RunContext, StagePlan, params, reason, regular_files, stage_plan

NAME = "tokenizer"
DOC = "copy tokenizers and check they load as fast tokenizers"
READS: tuple[str, ...] = ()
WRITES: tuple[str, ...] | None = None  # its inputs' names under tokenizer/ (graph.remote.declared)
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
TOOLS: tuple[str, ...] = ("tokenizers", "transformers")
PLATFORM: str | None = None
CODE_VERSION = "1"
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
         "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
         "tokenizer.model", "chat_template.jinja")


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    src = bundle.source.tokenizer
    here = regular_files(src)
    return [stage_plan(
        bundle, layout, "tokenizer", doc=f"copy and check {bundle.name}'s fast tokenizer",
        inputs=tuple(src / f for f in FILES if f in here), params=params(CODE_VERSION))]


def run(ctx: RunContext) -> Report:
    if not ctx.plan.inputs:
        raise BuildError(f"{ctx.bundle.source.tokenizer}: no tokenizer files (expected "
                         "tokenizer.json); save the tokenizer with save_pretrained next to the model")
    for f in ctx.plan.inputs:
        if f.suffix == ".json":  # a broken JSON file is named here, not deep inside the loader
            try:
                read_json(f)
            except BadFile as exc:
                raise exc.build_error() from None
    dest = ctx.out / "tokenizer"
    dest.mkdir()
    for f in ctx.plan.inputs:
        shutil.copyfile(f, dest / f.name)
    return check_fast(dest, ctx.bundle.source.tokenizer)


def check_fast(path: Path, source: Path | None = None) -> Report:
    """Load as a fast tokenizer and encode a sample; the serving side will do the same.
    `source` is where the files came from, which is what a failure names."""
    from transformers import AutoTokenizer

    where = source or path
    try:
        tok = AutoTokenizer.from_pretrained(str(path), use_fast=True)
        ids = tok("modelkiln smoke test")["input_ids"] if tok.is_fast else [0]
    except Exception as exc:
        raise BuildError(f"{where}: tokenizer does not load: {reason(exc)}; check tokenizer.json "
                         "(save it with save_pretrained)") from None
    if not tok.is_fast:
        raise BuildError(f"{where}: tokenizer loads only as a slow (Python) tokenizer; ship "
                         "tokenizer.json (PreTrainedTokenizerFast.save_pretrained writes it)")
    if not ids:
        raise BuildError(f"{where}: tokenizer encodes a sample to nothing; check its vocabulary")
    return {"class": type(tok).__name__, "vocab_size": tok.vocab_size}
