"""Shared by the stages that run a model: calibration data and PyTorch reference logits.

Thresholds choose cuts from these scores and the parity gates compare other runtimes with them,
so both read the calibration file and score it the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

# the one decision rule, shared with the serving runtime (artifacts/decisions.py)
from ..artifacts.decisions import decide as decide
from ..artifacts.decisions import scores as scores
from ..errors import BuildError
from ..model.calibration import read_rows
from ..model.files import BadFile

Batch = dict[str, Any]  # tokenizer output: input name -> 2-D integer array (rows x tokens)


def read_calibration(path: Path | None, labels: tuple[str, ...], limit: int | None = None
                     ) -> tuple[list[str], Any]:
    """Texts and a 0/1 label matrix (rows x labels) from JSONL rows {"text": .., "labels": [..]}.

    `path` is None when the spec names no calibration file; validation refuses the specs whose
    stages need one, so reaching here without one is a spec the checks missed: say what to set.
    """
    import numpy as np

    if path is None:
        raise BuildError("this stage needs calibration data, and the spec names none; set "
                         "thresholds.calibration (JSONL of text + labels)")

    try:
        rows = read_rows(path, labels, limit)
    except BadFile as exc:
        raise exc.build_error() from None
    matrix = np.zeros((len(rows.texts), len(labels)), dtype=np.int8)
    for i, hits in enumerate(rows.labels):
        matrix[i, list(hits)] = 1
    return list(rows.texts), matrix


def encode(tokenizer_dir: Path, texts: list[str], max_length: int) -> Batch:
    """Tokenize once, padded to the longest row, as numpy int64 (fed to torch and onnxruntime)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), use_fast=True)
    return dict(tok(texts, padding=True, truncation=True, max_length=max_length,
                    return_tensors="np"))


def torch_logits(model_dir: Path, batch: Batch, chunk: int = 64) -> Any:
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


# --- ONNX Runtime side (onnx, int8, parity, smoke stages) ---------------------------------------
# Every ONNX file is opened through `ort_session`, which first refuses external data that points
# outside the model's directory (stages.onnx.check_external_data).

def ort_session(model_path: Path, threads: int | None = None) -> Any:
    """A CPU InferenceSession for a checked ONNX file (external data: bare names beside it)."""
    import onnxruntime as ort

    from .onnx import check_external_data

    check_external_data(model_path)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # warnings about unused initializers are noise in build logs
    try:
        return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BuildError(f"{model_path}: onnxruntime cannot load it: {str(exc)[:400]}; "
                         "rebuild the ONNX stages") from None


def ort_feed(session: Any, batch: Batch) -> Batch:
    """The encoded batch restricted to the model's inputs (int64); a missing input is an error."""
    import numpy as np

    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in batch]
    if missing:
        raise BuildError(f"the ONNX model needs inputs {missing} that the tokenizer does not "
                         f"produce (it gives {sorted(batch)}); export with a matching tokenizer")
    return {n: np.asarray(batch[n], dtype=np.int64) for n in names}


def ort_logits(model_path: Path | Any, batch: Batch, chunk: int = 64) -> Any:
    """Logits of an ONNX model (a path or an open session) over an encoded batch, float32."""
    import numpy as np

    session = model_path if hasattr(model_path, "run") else ort_session(model_path)
    feed = ort_feed(session, batch)
    n = len(next(iter(feed.values())))
    outs = [session.run(["logits"], {k: v[s:s + chunk] for k, v in feed.items()})[0]
            for s in range(0, n, chunk)]
    return np.concatenate(outs).astype(np.float32)


def ort_logits_per_text(model_path: Path | Any, batch: Batch) -> Any:
    """Logits of each text run on its own (batch 1, padding stripped), float32.

    Dynamically quantized models scale activations per input tensor, so a row's int8 logits
    depend on the other rows and the padding in its batch; one text per run is what a serving
    call for one text computes, and it does not depend on how the calibration set is chunked.
    """
    import numpy as np

    session = model_path if hasattr(model_path, "run") else ort_session(model_path)
    feed = ort_feed(session, batch)
    mask = np.asarray(batch.get("attention_mask", np.ones_like(batch["input_ids"])))
    outs = []
    for i in range(len(mask)):
        length = int(mask[i].sum())
        right_padded = bool(mask[i, :length].all())
        row = {k: v[i:i + 1, :length] if right_padded else v[i:i + 1] for k, v in feed.items()}
        outs.append(session.run(["logits"], row)[0])
    return np.concatenate(outs).astype(np.float32)
