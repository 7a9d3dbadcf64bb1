"""tokenizer: the checkpoint's tokenizer files -> `tokenizer/`, checked to load as a fast tokenizer.

The files are copied byte for byte (not re-saved), so the bundle carries exactly what was trained.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import BuildError
from ..model.bundle import Bundle
from ..paths import Layout
from .base import Report, RunContext, StagePlan, params, stage_plan

CODE_VERSION = "1"
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
         "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
         "tokenizer.model")


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    src = bundle.source.tokenizer
    return [stage_plan(
        bundle, layout, "tokenizer", doc=f"copy and check {bundle.name}'s fast tokenizer",
        inputs=tuple(src / f for f in FILES if (src / f).is_file()), params=params(CODE_VERSION))]


def run(ctx: RunContext) -> Report:
    if not ctx.plan.inputs:
        raise BuildError(f"{ctx.bundle.source.tokenizer}: no tokenizer files (expected "
                         "tokenizer.json); save the tokenizer with save_pretrained next to the model")
    dest = ctx.out / "tokenizer"
    dest.mkdir()
    for f in ctx.plan.inputs:
        shutil.copyfile(f, dest / f.name)
    return check_fast(dest)


def check_fast(path: Path) -> Report:
    """Load as a fast tokenizer and encode a sample; the serving side will do the same."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except Exception as exc:
        raise BuildError(f"tokenizer does not load: {exc}; check tokenizer.json") from None
    if not tok.is_fast:
        raise BuildError("tokenizer loads only as a slow (Python) tokenizer; ship tokenizer.json "
                         "(PreTrainedTokenizerFast.save_pretrained writes it)")
    ids = tok("modelkiln smoke test")["input_ids"]
    if not ids:
        raise BuildError("tokenizer encodes a sample to nothing; check its vocabulary")
    return {"class": type(tok).__name__, "vocab_size": tok.vocab_size}
