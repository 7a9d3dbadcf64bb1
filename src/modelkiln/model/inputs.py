"""The files a spec points at, checked for meaning: the checkpoint and the label files.

Each file is read once through `model.files` (so no content can raise past here) and its JSON type
is checked before it is indexed. What is checked, cheaply enough to run on every `kiln validate`:
- the checkpoint has a config.json that is a JSON object, whose `id2label` maps "0".."n-1" to names,
  that has a classification head at all (an embedding checkpoint, `BertModel` or `MPNetModel` saved
  without `id2label`/`num_labels`, is named as such, not as a head of 0 outputs), and whose `problem_type` (when it has one) agrees with `source.task`: a multi-label checkpoint
  shipped as single-label would get softmax thresholds for a sigmoid head, and the reverse;
- every safetensors weight file's header is consistent with its size (8 bytes + the header read);
- the label order is a non-empty list of distinct strings matching the head, and the label fields
  an object keyed by exactly those labels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifacts import names as files
from ..errors import display_path
from ..sources.uris import is_remote
from . import bundle as m
from .checker import MISSING, Checker, Data, kind_of
from .files import BadFile, head_labels, read_json, type_name
from .st_header import check_header

WEIGHT_FILES = (files.WEIGHTS, files.WEIGHTS_INDEX, files.PICKLE_WEIGHTS,
                files.PICKLE_WEIGHTS_INDEX)
# config.json `problem_type` -> the spec's `source.task` it must go with
PROBLEM_TYPES = {"multi_label_classification": "multi-label-classification",
                 "single_label_classification": "single-label-classification"}
_CKPT = ("source", "checkpoint")
# architectures that end in one of these carry no classification head: a bare encoder (BertModel,
# MPNetModel) or a pre-training head; their outputs are hidden states, not labels
_HEADLESS_SUFFIXES = ("Model", "ForMaskedLM", "ForPreTraining", "ForCausalLM")


def shard_files(ckpt: Path, single: str, index: str) -> list[Path]:
    """`single`, or the shards `index` names (each a bare file name beside it); [] for neither."""
    if kind_of(ckpt / single) == "file":
        return [ckpt / single]
    if kind_of(ckpt / index) != "file":
        return []
    index_json = read_json(ckpt / index, origin=display_path(ckpt / index))
    where = f"{display_path(ckpt / index)}: weight_map"
    weight_map = index_json.get("weight_map") if isinstance(index_json, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise BadFile(f"{where} must be a non-empty JSON object of tensor -> shard file, got "
                      f"{type_name(weight_map)}", "re-save the model with save_pretrained")
    shards = set()
    for shard in weight_map.values():
        if not isinstance(shard, str) or not shard or "/" in shard or "\\" in shard \
                or shard in (".", "..") or "\x00" in shard:
            raise BadFile(f"{where} names {str(shard)[:80]!r}, not a shard file beside the index",
                          "re-save the model with save_pretrained")
        shards.add(shard)
    missing = sorted(s for s in shards if kind_of(ckpt / s) != "file")
    if missing:
        raise BadFile(f"{where} names {missing[0]!r}, which is not a file in {display_path(ckpt)}",
                      "copy every shard next to the index, or re-save the model")
    return [ckpt / s for s in sorted(shards)]


def safetensors_files(ckpt: Path) -> list[Path]:
    """model.safetensors, or the shards its index names."""
    return shard_files(ckpt, files.WEIGHTS, files.WEIGHTS_INDEX)


def _weights(c: Checker, ckpt: Path) -> None:
    if not any(kind_of(ckpt / f) == "file" for f in WEIGHT_FILES):
        c.fail(_CKPT, "checkpoint has no weights (model.safetensors, sharded safetensors or "
               "pytorch_model.bin)", "save the model with save_pretrained")
        return
    try:
        for shard in safetensors_files(ckpt):
            check_header(shard, display_path(shard))
    except BadFile as exc:
        c.fail(_CKPT, exc.message, exc.hint)


def headless_reason(config: Any) -> str:
    """Why a config.json describes a checkpoint without a classification head, or "".

    A checkpoint without one is an embedding model (sentence-transformers, a bare encoder): its
    config has neither `id2label` nor `num_labels`, or its `architectures` are all bare encoders or
    pre-training heads."""
    if not isinstance(config, dict):
        return ""
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and all(
            isinstance(a, str) and "Classification" not in a and a.endswith(_HEADLESS_SUFFIXES)
            for a in archs):
        return f"architectures {[a[:60] for a in archs[:4]]}"
    if "id2label" not in config and "num_labels" not in config:
        return "neither id2label nor num_labels"
    return ""


def _config(c: Checker, ckpt: Path, task: str) -> list[str] | None:
    """The head's labels from config.json (None when unusable: a problem is recorded)."""
    found = kind_of(ckpt / files.CONFIG)
    if found == "other" or found == "dir":
        c.fail(_CKPT, f"{display_path(ckpt / files.CONFIG)} is not a regular file",
               "save the config with save_pretrained")
        return None
    if found != "file":
        c.fail(_CKPT, "checkpoint has no config.json",
               "point at a Hugging Face style checkpoint directory (save_pretrained output)")
        return None
    config = c.json_file(_CKPT, ckpt / files.CONFIG)
    if config is MISSING:
        return None
    origin = display_path(ckpt / files.CONFIG)
    headless = headless_reason(config)
    if headless:
        c.fail(("source", "task"), f"{task}, but the checkpoint has no classification head "
               f"({origin} has {headless}): it is an embedding model, and the task that would fit "
               "it is feature-extraction (planned, not yet supported)",
               "point source.checkpoint at a *ForSequenceClassification checkpoint saved with "
               "save_pretrained, or fine-tune a classification head on this one")
        return None
    try:
        head = head_labels(config, origin)
    except BadFile as exc:
        c.fail(_CKPT, exc.message, exc.hint)
        return None
    problem_type = config.get("problem_type")
    if problem_type is not None and PROBLEM_TYPES.get(problem_type) != task:
        wanted = PROBLEM_TYPES.get(problem_type) if isinstance(problem_type, str) else None
        fix = f"set source.task: {wanted}" if wanted else "build a classification checkpoint"
        c.fail(("source", "task"), f"{task}, but {origin} says problem_type "
               f"{str(problem_type)[:60]!r} (the bundle would score a "
               f"{'sigmoid' if 'multi' in str(problem_type) else 'softmax'} head with "
               f"{'softmax' if task.startswith('single') else 'sigmoid'})",
               f"{fix}, or correct problem_type in config.json")
    return head


def source(c: Checker, data: Data) -> tuple[m.Source, list[str] | None]:
    """The `source:` section and the model head's labels (None when they cannot be read)."""
    src = data["source"]
    ckpt = c.path(_CKPT, src["checkpoint"], "dir")
    head = None
    remote = is_remote(src["checkpoint"])  # read what `kiln lock` fetched; never the network
    if ckpt is not None and (kind_of(ckpt / files.CONFIG) == "file" if remote else kind_of(ckpt) == "dir"):
        # a task kind of its own (embeddings) has no classification head to read labels from
        head = _config(c, ckpt, src["task"]) if src["task"] in PROBLEM_TYPES.values() else None
        if not remote:  # a remote checkpoint's shard headers are checked by the weights stage
            _weights(c, ckpt)
    tok = c.path(("source", "tokenizer"), src.get("tokenizer"), "dir") if "tokenizer" in src else ckpt
    return m.Source(ckpt or Path(), src["task"], tok or Path(), src.get("dtype")), head


def _order(c: Checker, order: Any) -> tuple[str, ...]:
    if order is MISSING:
        return ()
    if not (isinstance(order, list) and order and all(isinstance(x, str) for x in order)):
        got = "an empty list" if order == [] else type_name(order)
        c.fail(("labels", "order"), f"label order must be a non-empty JSON list of strings, got {got}",
               'e.g. ["cpt_code", "laterality"]')
        return ()
    if len(set(order)) != len(order):
        dups = sorted({x for x in order if order.count(x) > 1})
        c.fail(("labels", "order"), f"duplicate labels {dups}", "each label once")
        return ()
    return tuple(order)


def labels(c: Checker, data: Data, head: list[str] | None) -> m.Labels:
    """The `labels:` section, checked against each other and the model's head."""
    lab = data["labels"]
    order_p = c.path(("labels", "order"), lab["order"], "file")
    fields_p = c.path(("labels", "fields"), lab["fields"], "file")
    names = _order(c, c.json_file(("labels", "order"), order_p))
    fields = c.json_file(("labels", "fields"), fields_p)
    if fields is not MISSING and not isinstance(fields, dict):
        c.fail(("labels", "fields"), f"label fields must be a JSON object keyed by label, got "
               f"{type_name(fields)}", '{"label": {...}, ...}')
    elif isinstance(fields, dict) and names and set(fields) != set(names):
        extra, missing = sorted(set(fields) - set(names)), sorted(set(names) - set(fields))
        c.fail(("labels", "fields"), f"labels differ from labels.order (extra: {extra}, "
               f"missing: {missing})", "one entry per label in label_order")
    if head is not None and names:
        if len(head) != len(names):
            c.fail(("labels", "order"), f"{len(names)} labels, but the model's head has "
                   f"{len(head)} outputs", "labels.order must list every output of the model")
        elif head != list(names):
            c.fail(("labels", "order"), f"labels do not match the model's id2label {head}",
                   "list labels in the model's output order (config.json id2label)")
    return m.Labels(order_p or Path(), fields_p or Path(), names)
