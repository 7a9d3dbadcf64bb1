"""weights: a Hugging Face checkpoint directory -> `config.json` + safetensors weights.

A sharded safetensors checkpoint (model-0000i-of-0000N.safetensors + model.safetensors.index.json)
stays sharded: each shard's header is checked, the shard is hard-linked from this stage's previous
output when its bytes are unchanged, else cloned or copied (cast tensor by tensor when the spec
asks for a dtype), and the set is checked against its architecture on the meta device
(stages/shards.py). Memory stays flat whatever the model's size, and a one-shard change writes one
shard. A single `model.safetensors` and `pytorch_model.bin` (single or sharded) become one
`model.safetensors` as before. Pickles are read only with `torch.load(weights_only=True)`, which
refuses any global outside torch's tensor allow-list: a pickle that tries to run code fails before
anything runs. Weights leave the build only as safetensors.
"""
from __future__ import annotations

import json
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ..artifacts import names
from ..errors import BuildError
from ..model.bundle import Bundle
from ..model.files import BadFile, expect_object, head_labels, read_json
from ..model.inputs import shard_files
from ..model.st_header import check_header
from ..paths import Layout
from . import kinds
from .base import Report, RunContext, StagePlan, params, reason, regular_files, stage_plan

StateDict = dict[str, Any]  # parameter name -> torch.Tensor (torch is imported only in run)

NAME = "weights"
DOC = "convert checkpoints to safetensors and check they load"
READS: tuple[str, ...] = ()
WRITES: tuple[str, ...] | None = (names.CONFIG, "*.safetensors")  # one file, or the shards (any names)
# a sharded checkpoint's index (it stays sharded); generation_config.json where a kind ships it
OPTIONAL: tuple[str, ...] = (names.WEIGHTS_INDEX, "generation_config.json")
TOOLS: tuple[str, ...] = ("torch", "safetensors", "transformers")
PLATFORM: str | None = None
CODE_VERSION = "2"  # 2: sharded safetensors stay sharded (were merged into one file), casts noted
_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def checkpoint_files(ckpt: Path) -> list[Path]:
    """config.json plus every weight file the checkpoint holds (one listing, no reads)."""
    here = regular_files(ckpt)
    found = [names.CONFIG]
    for pattern in ("*.safetensors", names.WEIGHTS_INDEX, "*.bin", names.PICKLE_WEIGHTS_INDEX):
        found += sorted(n for n in here if fnmatchcase(n, pattern))
    return [ckpt / n for n in dict.fromkeys(found) if n in here]


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    ckpt = bundle.source.checkpoint
    return [stage_plan(
        bundle, layout, "weights", doc=f"convert {bundle.name}'s checkpoint to safetensors",
        inputs=tuple(checkpoint_files(ckpt)),
        params=params(CODE_VERSION, dtype=bundle.source.dtype, task=bundle.source.task))]


def _shards(ckpt: Path, single: str, index: str) -> list[Path]:
    try:
        return shard_files(ckpt, single, index)
    except BadFile as exc:
        raise exc.build_error() from None


def _load_safetensors(shard: Path) -> StateDict:
    """One safetensors file, its header checked first so a lie is named, not a deep panic."""
    from safetensors.torch import load_file

    try:
        check_header(shard)
        loaded: StateDict = load_file(str(shard))
    except BadFile as exc:
        raise exc.build_error() from None
    except Exception as exc:  # the loader's own refusal: name the file it was reading
        raise BuildError(f"{shard}: safetensors cannot read it: {reason(exc)}; re-save the "
                         "checkpoint with save_pretrained") from None
    return loaded


def load_state_dict(ckpt: Path) -> StateDict:
    """All tensors of a checkpoint; pickles only through torch's weights-only unpickler."""
    import torch

    state: StateDict = {}
    st = _shards(ckpt, names.WEIGHTS, names.WEIGHTS_INDEX)
    for shard in st:
        state.update(_load_safetensors(shard))
    if st:
        return state
    for shard in _shards(ckpt, names.PICKLE_WEIGHTS, names.PICKLE_WEIGHTS_INDEX):
        try:
            loaded = torch.load(shard, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError and friends: the pickle asked for more
            raise BuildError(f"{shard}: refused to unpickle: {reason(exc)}; only plain tensor "
                             "pickles are read (weights_only). Re-save the checkpoint with "
                             "save_pretrained(safe_serialization=True)") from None
        if not isinstance(loaded, dict):
            raise BuildError(f"{shard}: not a state dict; re-save with save_pretrained")
        state.update(loaded)
    if not state:
        raise BuildError(f"{ckpt}: no weights found; expected model.safetensors, sharded "
                         "safetensors with an index, or pytorch_model.bin")
    return state


def read_config(path: Path, head: bool = True) -> dict[str, Any]:
    """A checkpoint's config.json as a JSON object, or a BuildError that names it. `head`: it
    must carry a classification head's labels (every task but a kind of its own)."""
    try:
        config = expect_object(read_json(path), str(path), '{"model_type": "bert", ...}')
        if head:
            head_labels(config, str(path))
    except BadFile as exc:
        raise exc.build_error() from None
    return config


def _untie(state: StateDict) -> StateDict:
    """safetensors refuses tensors that share memory; give each its own contiguous storage."""
    seen: set[int] = set()
    out = {}
    for name in sorted(state):
        t = state[name]
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        out[name] = t.clone().contiguous() if ptr in seen or not t.is_contiguous() else t
        seen.add(ptr)
    return out


def run(ctx: RunContext) -> Report:
    import torch
    from safetensors.torch import save_file

    ckpt = ctx.bundle.source.checkpoint
    kind = kinds.kind_of(ctx.bundle)
    config = read_config(ckpt / names.CONFIG, head=kind is None or kind.head)
    if (ckpt / names.WEIGHTS_INDEX).is_file() and not (ckpt / names.WEIGHTS).is_file():
        return _keep_shards(ctx, ckpt, config)
    state = load_state_dict(ckpt)
    dtype = ctx.bundle.source.dtype
    if dtype:
        target = getattr(torch, _DTYPES[dtype])
        state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
        config["torch_dtype"] = dtype
    save_file(_untie(state), str(ctx.out / names.WEIGHTS), metadata={"format": "pt"})
    (ctx.out / names.CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    _check_loads(ctx.out, len(state), ckpt, kind.auto_class if kind else None)
    ctx.log(f"weights:{ctx.bundle.name}: {len(state)} tensors -> model.safetensors")
    return {"tensors": len(state), "dtype": dtype or "as stored"}


def _keep_shards(ctx: RunContext, ckpt: Path, config: dict[str, Any]) -> Report:
    """A sharded safetensors checkpoint, shipped sharded (see the module doc): per shard, the
    header checked, then linked from the previous output, cloned, copied or cast; the index
    copied (its total_size recomputed after a cast); the whole checked against config.json."""
    from . import shards as sh

    found = _shards(ckpt, names.WEIGHTS, names.WEIGHTS_INDEX)
    for shard in found:
        try:
            check_header(shard)
        except BadFile as exc:
            raise exc.build_error() from None
    tensors = sh.tensor_shapes(found)
    sh.check_index(ckpt / names.WEIGHTS_INDEX, tensors)
    dtype = ctx.bundle.source.dtype
    how: dict[str, int] = {}
    if dtype:
        for shard in found:
            way = sh.cast_or_link(shard, ctx.out / shard.name, dtype,
                                  ctx.plan.out_dir / shard.name, ctx.cache)
            how[way] = how.get(way, 0) + 1
        total = sum(sh.data_size(ctx.out / s.name) for s in found)
        index = json.loads((ckpt / names.WEIGHTS_INDEX).read_bytes())
        index.setdefault("metadata", {})["total_size"] = total
        (ctx.out / names.WEIGHTS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True)
                                                   + "\n")
        config["torch_dtype"] = dtype
        tensors = sh.tensor_shapes(ctx.out / s.name for s in found)
    else:
        for shard in found:
            way = sh.place(shard, ctx.out / shard.name, ctx.plan.out_dir / shard.name, ctx.cache)
            how[way] = how.get(way, 0) + 1
        sh.place(ckpt / names.WEIGHTS_INDEX, ctx.out / names.WEIGHTS_INDEX, None, ctx.cache)
    kind = kinds.kind_of(ctx.bundle)
    if kind is not None and kind.keep_shards and (ckpt / "generation_config.json").is_file():
        sh.place(ckpt / "generation_config.json", ctx.out / "generation_config.json", None,
                 ctx.cache)
    (ctx.out / names.CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    auto = kind.auto_class if kind else None
    checked = sh.check_keys(ctx.out, tensors, auto,
                            lambda: _check_loads(ctx.out, len(tensors), ckpt, auto))
    ctx.log(f"weights:{ctx.bundle.name}: {len(found)} safetensors shards kept sharded ("
            + ", ".join(f"{n} {k}" for k, n in sorted(how.items())) + ")")
    return {"shards": len(found), "tensors": len(tensors), "dtype": dtype or "as stored",
            "placed": dict(sorted(how.items())), "checked": checked}


def _check_loads(out: Path, count: int, source: Path, auto_class: str | None = None) -> None:
    """The converted checkpoint must load into its architecture with no missing or extra keys
    (a task kind names its own transformers Auto class; classifiers load with a head)."""
    import transformers

    loader = getattr(transformers, auto_class or "AutoModelForSequenceClassification")
    try:
        _model, info = loader.from_pretrained(str(out), output_loading_info=True)
    except Exception as exc:
        raise BuildError(f"{out}: converted weights do not load with transformers: {reason(exc)}; "
                         "check that config.json matches the weights") from None
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys",
                                                         "mismatched_keys")}
    if bad:
        shown = "; ".join(f"{k} ({len(v)}): {', '.join(map(str, v[:3]))}{', ...' if len(v) > 3 else ''}"
                          for k, v in bad.items())
        raise BuildError(f"{source}: the weights do not match the architecture in config.json "
                         f"({shown}); check that config.json belongs to these weights")
