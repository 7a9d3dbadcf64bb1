"""Shared by the stages that run a model: calibration data and PyTorch reference logits.

Thresholds choose cuts from these scores and the parity gates compare other runtimes with them,
so both read the calibration file and score it the same way.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import BuildError


def read_calibration(path: Path, labels: tuple[str, ...], limit: int | None = None
                     ) -> tuple[list[str], Any]:
    """Texts and a 0/1 label matrix (rows x labels) from JSONL rows {"text": .., "labels": [..]}."""
    import numpy as np

    index = {name: i for i, name in enumerate(labels)}
    texts, rows = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, names = row["text"], row.get("labels", [])
            except (ValueError, KeyError, TypeError):
                raise BuildError(f"{path}:{lineno}: expected a JSON object with 'text' and "
                                 "'labels'; fix that line") from None
            unknown = [n for n in names if n not in index]
            if unknown:
                raise BuildError(f"{path}:{lineno}: unknown labels {unknown}; labels are "
                                 f"{list(labels)}")
            y = np.zeros(len(labels), dtype=np.int8)
            y[[index[n] for n in names]] = 1
            texts.append(str(text))
            rows.append(y)
            if limit and len(texts) >= limit:
                break
    if not texts:
        raise BuildError(f"{path}: no calibration rows; add JSONL lines of text + labels")
    return texts, np.stack(rows)


def encode(tokenizer_dir: Path, texts: list[str], max_length: int) -> dict:
    """Tokenize once, padded to the longest row, as numpy int64 (fed to torch and onnxruntime)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), use_fast=True)
    return dict(tok(texts, padding=True, truncation=True, max_length=max_length,
                    return_tensors="np"))


def torch_logits(model_dir: Path, batch: dict, chunk: int = 64) -> Any:
    """Logits of the PyTorch model over an encoded batch, in float32 numpy."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir),
                                                               dtype=torch.float32)
    model.eval()
    n = len(next(iter(batch.values())))
    outs = []
    with torch.inference_mode():
        for start in range(0, n, chunk):
            part = {k: torch.from_numpy(v[start:start + chunk]) for k, v in batch.items()}
            outs.append(model(**part).logits.float().numpy())
    return np.concatenate(outs)


def scores(logits: Any, task: str) -> Any:
    """Per-label scores: sigmoid for multi-label, softmax for single-label."""
    import numpy as np

    if task == "multi-label-classification":
        return 1.0 / (1.0 + np.exp(-logits))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
