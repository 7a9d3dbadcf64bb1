"""Sharded checkpoints for the weights tests and bench/bench_shards.py: real safetensors shards
with an index, as `save_pretrained` lays them out, written one shard in memory at a time.

`sharded_inputs` saves a seeded tiny classifier (as tests/helpers.make_inputs does) as N shards;
`big_checkpoint` writes a BERT-shaped classifier of any size from seeded random tensors (the
weights stage never looks at values, only at names, shapes and bytes); `bump_shard` changes one
tensor of one shard the way a retraining run would, writing a new file.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from helpers import LABELS

INDEX = "model.safetensors.index.json"


def shard_names(ckpt: Path) -> list[str]:
    """The shard files the checkpoint's index names, sorted."""
    index = json.loads((ckpt / INDEX).read_text())
    return sorted(set(index["weight_map"].values()))


def _save_shard(ckpt: Path, i: int, count: int, group: dict[str, Any],
                weight_map: dict[str, str]) -> int:
    """Write one group of tensors as model-0000i-of-0000N.safetensors; its tensor bytes."""
    from safetensors.torch import save_file

    name = f"model-{i:05d}-of-{count:05d}.safetensors"
    save_file(group, str(ckpt / name), metadata={"format": "pt"})
    weight_map.update((key, name) for key in group)
    return sum(int(t.numel() * t.element_size()) for t in group.values())


def _save_index(ckpt: Path, weight_map: dict[str, str], total: int) -> None:
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (ckpt / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _split(names: list[str], sizes: dict[str, int], shards: int) -> list[list[str]]:
    """Consecutive runs of `names` of about equal bytes, exactly `shards` of them."""
    target = sum(sizes.values()) / shards
    out: list[list[str]] = [[]]
    done = 0
    for n in names:
        if out[-1] and len(out) < shards and done + sizes[n] / 2 > target * len(out):
            out.append([])
        out[-1].append(n)
        done += sizes[n]
    assert len(out) == shards, f"{len(names)} tensors did not split into {shards} shards"
    return out


def sharded_inputs(directory: Path, shards: int = 4, seed: int = 0, steps: int = 15,
                   rows: int = 200, calibration: int = 80) -> None:
    """make_inputs' files with a seeded tiny classifier of hidden 64 and two layers (shards of
    about 100 KiB), its weights as `shards` shards."""
    from safetensors.torch import load_file

    from modelkiln import demo

    held_out = demo.make_checkpoint(directory / "checkpoint", LABELS, seed=seed, steps=steps,
                                    rows=rows)
    demo.write_label_files(directory, LABELS)
    demo.write_jsonl(directory / "calibration.jsonl", held_out[:calibration])
    ckpt = directory / "checkpoint"
    state = load_file(str(ckpt / "model.safetensors"))
    order = sorted(state)
    groups = _split(order, {k: state[k].numel() * state[k].element_size() for k in order}, shards)
    weight_map: dict[str, str] = {}
    total = sum(_save_shard(ckpt, i, shards, {k: state[k].contiguous() for k in g}, weight_map)
                for i, g in enumerate(groups, 1))
    _save_index(ckpt, weight_map, total)
    (ckpt / "model.safetensors").unlink()


def big_checkpoint(ckpt: Path, tokenizer_from: Path, *, hidden: int, layers: int,
                   shards: int, seed: int = 0) -> int:
    """A BERT-shaped multi-label classifier with LABELS as its head, `shards` shards of seeded
    random float32 tensors, and the tokenizer files of `tokenizer_from`; returns the bytes of
    weights written. Memory: one shard."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    ckpt.mkdir(parents=True, exist_ok=True)
    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                        vocab_size=30522, num_labels=len(LABELS),
                        id2label=dict(enumerate(LABELS)),
                        label2id={n: i for i, n in enumerate(LABELS)},
                        problem_type="multi_label_classification",
                        architectures=["BertForSequenceClassification"])
    with torch.device("meta"):
        model = BertForSequenceClassification(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    order = sorted(shapes)
    sizes = {k: 4 * int(torch.Size(s).numel()) for k, s in shapes.items()}
    gen = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for i, names in enumerate(_split(order, sizes, shards), 1):
        group = {k: torch.randn(shapes[k], generator=gen) * 0.02 for k in names}
        total += _save_shard(ckpt, i, shards, group, weight_map)
        del group
    _save_index(ckpt, weight_map, total)
    config.save_pretrained(str(ckpt))
    for f in tokenizer_from.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(f, ckpt / f.name)
    return total


def bump_shard(path: Path) -> str:
    """Change one tensor of the shard at `path` (a new file, as a retraining run writes it);
    returns the tensor's name."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    key = sorted(state)[0]
    state[key] = state[key] + 0.001
    tmp = path.with_name(path.name + ".new")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    return key


_MEASURE = """\
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(done.stdout + done.stderr)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss(cmd: list[str], cwd: Path) -> tuple[int, int, str]:
    """Run `cmd` under a small Python parent that reports its children's peak RSS (getrusage,
    KiB on Linux) so that nothing this process ran before counts; (exit code, bytes, output)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], cwd=cwd, capture_output=True,
                          text=True, timeout=1800)
    code, kib = done.stdout.split()
    return int(code), int(kib) * 1024, done.stderr


def big_project_inputs(directory: Path, *, hidden: int, layers: int, shards: int,
                       seed: int = 0) -> int:
    """Inputs of helpers.SPEC (labels, calibration rows, tokenizer) around a big_checkpoint;
    the weights' bytes. Nothing is trained: the weights stage reads no values."""
    from modelkiln import demo

    rows = demo.synthetic_rows(LABELS, 80, seed, True)
    tok = directory / "tokenizer-src"
    tok.mkdir(parents=True, exist_ok=True)
    demo.make_tokenizer([r["text"] for r in rows], tok)
    demo.write_label_files(directory, LABELS)
    demo.write_jsonl(directory / "calibration.jsonl", rows)
    size = big_checkpoint(directory / "checkpoint", tok, hidden=hidden, layers=layers,
                          shards=shards, seed=seed)
    shutil.rmtree(tok)
    return size
