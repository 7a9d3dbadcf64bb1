"""PyTorch and int8 scores of a built project's calibration rows, computed without stage code.

An independent check of the parity stage: plain transformers + onnxruntime, one text per int8 run.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def scores(root: Path, name: str = "tiny") -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(labels, PyTorch probabilities, int8 probabilities, shipped cuts) over calibration.jsonl."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    build = root / "build" / name
    rows = [json.loads(line) for line in (root / "bundles" / name / "calibration.jsonl").open()]
    labels = json.loads((build / "labels/label_order.json").read_text())
    shipped = json.loads((build / "thresholds/thresholds.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(build / "tokenizer/tokenizer"))
    enc = tok([r["text"] for r in rows], padding=True, truncation=True, max_length=128,
              return_tensors="np")
    model = AutoModelForSequenceClassification.from_pretrained(str(build / "weights")).eval()
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
    sess = ort.InferenceSession(str(build / "int8/registry_model_int8.onnx"))
    q = np.concatenate([  # one text per run, unpadded, as a serving call for one text
        sess.run(["logits"], dict(tok([r["text"]], truncation=True, max_length=128,
                                      return_tensors="np")))[0] for r in rows])

    def sigmoid(x: np.ndarray) -> np.ndarray:
        return (1 / (1 + np.exp(-x.astype(np.float64)))).astype(np.float32)

    return labels, sigmoid(ref), sigmoid(q), np.array([shipped[lab] for lab in labels],
                                                      dtype=np.float32)
