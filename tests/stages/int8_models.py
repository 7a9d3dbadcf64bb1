"""Tiny seeded checkpoints doctored so that int8 quantization fails in a known way.

Both edits leave the fp32 model's answers as they were (or nearly: an unused token), and break
only what a quantizer with one scale per tensor or per output channel does to them:

- `outlier_embedding`: one row no text uses ([MASK]) of the word-embedding table gets a huge
  value. onnxruntime quantizes a Gather's table with one scale for the whole tensor, so every
  other embedding rounds to zero: any setting that quantizes the embeddings flips decisions;
  settings that keep them in float (MatMul only, or the drifting nodes in float) pass.
- `outlier_inputs`: one hidden channel is zeroed at every LayerNorm (weight and bias 0, so it is
  exactly 0 in fp32), and every Linear that reads a LayerNorm's output gets a huge weight for
  that channel. In fp32 it multiplies an exact zero; quantized, it sets every output channel's
  scale, and the real weights round to zero. Every candidate quantizes those eight MatMuls.
"""
from __future__ import annotations

import json
from pathlib import Path

OUTLIER = 60.0


def outlier_embedding(checkpoint: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = checkpoint / "model.safetensors"
    tensors = load_file(str(path))
    vocab = json.loads((checkpoint / "tokenizer.json").read_text())["model"]["vocab"]
    key = next(k for k in tensors if k.endswith("word_embeddings.weight"))
    tensors[key][vocab["[MASK]"], 0] = OUTLIER
    save_file(tensors, str(path), metadata={"format": "pt"})


def outlier_inputs(checkpoint: Path, channel: int = 0) -> None:
    from safetensors.torch import load_file, save_file

    path = checkpoint / "model.safetensors"
    tensors = load_file(str(path))
    for key in [k for k in tensors if "LayerNorm" in k]:
        tensors[key][channel] = 0.0
    for key in [k for k in tensors if k.endswith(("query.weight", "key.weight", "value.weight",
                                                  "intermediate.dense.weight"))]:
        tensors[key][:, channel] = OUTLIER  # Linear weight is [out, in]: input `channel`
    save_file(tensors, str(path), metadata={"format": "pt"})
