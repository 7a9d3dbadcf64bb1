"""gen_parity: a decoder LLM's ONNX models must decode as PyTorch does, or the bundle fails.

PyTorch decodes each calibration prompt greedily for `generation.steps` tokens. The ONNX models
then read PyTorch's sequence (prompt + generated tokens) in one pass, teacher-forced, and at each
generated position pick their own greedy token: agreement is the share of steps where it is
PyTorch's. Teacher forcing keeps one early disagreement from counting every later step against
the model. The first generated step's largest |logit difference| is reported and gated beside
it. fp32 ONNX must agree on every step with a first-step difference under 1e-3 (export is exact
up to rounding); int8 within `generation.parity`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..artifacts import names
from ..errors import BuildError
from ..model.bundle import Bundle
from ..model.calibration import MAX_LINE
from ..paths import Layout
from .base import Report, RunContext, StagePlan, params, stage_plan

REPORT = "generation_parity.json"
FP32_LOGIT_DIFF = 1e-3
NAME = "gen_parity"
DOC = "gate a decoder LLM: greedy next-token agreement and first-step logits of ONNX vs PyTorch"
READS: tuple[str, ...] = ("weights", "tokenizer", "onnx", "int8")
WRITES: tuple[str, ...] | None = (REPORT,)
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
TOOLS: tuple[str, ...] = ("torch", "transformers", "tokenizers", "onnxruntime")
PLATFORM: str | None = None
CODE_VERSION = "1"


def plan(bundle: Bundle, layout: Layout) -> list[StagePlan]:
    g = bundle.generation
    if g is None or bundle.onnx is None:
        return []
    return [stage_plan(
        bundle, layout, "gen_parity",
        doc=f"generation parity for {bundle.name}: int8 greedy agreement >= {g.min_agreement:g} "
            f"over {g.steps} steps",
        inputs=(g.calibration,), upstream=READS,
        params=params(CODE_VERSION, steps=g.steps, min_agreement=g.min_agreement,
                      max_first_logit_diff=g.max_first_logit_diff, max_length=g.max_length),
        backend="onnx")]


def read_prompts(path: Path) -> list[str]:
    prompts = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            row = json.loads(raw) if len(raw) <= MAX_LINE else None
            text = row.get("prompt", row.get("text")) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise BuildError(f'{path}:{number}: expected {{"prompt": "..."}}')
            prompts.append(text)
    if not prompts:
        raise BuildError(f"{path}: no prompts")
    return prompts


def greedy(model: Any, ids: list[int], steps: int) -> tuple[list[int], Any]:
    """PyTorch's greedy continuation (recomputed per step: exact, and tiny here) and the first
    step's logits."""
    import torch

    seq, first = list(ids), None
    with torch.inference_mode():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1].float().numpy()
            first = logits if first is None else first
            seq.append(int(logits.argmax()))
    return seq[len(ids):], first


def onnx_logits(session: Any, config: dict[str, Any], seq: list[int]) -> Any:
    """Logits at every position of `seq` from the with-past graph, with an empty past."""
    import numpy as np

    n = len(seq)
    heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
    feed: dict[str, Any] = {}
    for i in session.get_inputs():
        if i.name == "input_ids":
            feed[i.name] = np.asarray([seq], dtype=np.int64)
        elif i.name == "attention_mask":
            feed[i.name] = np.ones((1, n), dtype=np.int64)
        elif i.name == "position_ids":
            feed[i.name] = np.arange(n, dtype=np.int64)[None]
        elif i.name.startswith("past_key_values"):
            feed[i.name] = np.zeros((1, heads, 0, head_dim), dtype=np.float32)
        else:
            raise BuildError(f"the generation graph takes an input {i.name!r} the gate cannot give")
    return session.run(["logits"], feed)[0][0]


def measure(session: Any, config: dict[str, Any], cases: list[tuple[list[int], list[int], Any]]
            ) -> dict[str, float]:
    import numpy as np

    agree, total, diff = 0, 0, 0.0
    for ids, gen, first in cases:
        logits = onnx_logits(session, config, ids + gen[:-1])
        picks = logits[len(ids) - 1:].argmax(axis=1)
        agree += int((picks == np.asarray(gen)).sum())
        total += len(gen)
        diff = max(diff, float(np.abs(logits[len(ids) - 1] - first).max()))
    return {"agreement": round(agree / total, 6), "first_logit_diff": float(f"{diff:.6g}")}


def run(ctx: RunContext) -> Report:
    from transformers import AutoTokenizer

    from .infer import ort_session
    from .int8 import OUTPUT as INT8
    from .onnx import MODEL

    g = ctx.bundle.generation
    if g is None:
        raise BuildError(f"{ctx.plan.task}: the spec has no generation section")
    tok = AutoTokenizer.from_pretrained(str(ctx.up("tokenizer") / names.TOKENIZER_DIR))
    config = json.loads((ctx.up("weights") / names.CONFIG).read_bytes())
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ctx.up("weights")), dtype=torch.float32)
    cases = []
    for prompt in read_prompts(g.calibration):
        ids = tok(prompt, truncation=True, max_length=g.max_length)["input_ids"]
        gen, first = greedy(model.eval(), ids, g.steps)
        cases.append((ids, gen, first))
    report: Report = {"rows": len(cases), "steps": g.steps,
                      "fp32": measure(ort_session(ctx.up("onnx") / MODEL), config, cases),
                      "int8": measure(ort_session(ctx.up("int8") / INT8), config, cases),
                      "limits": {"min_agreement": g.min_agreement,
                                 "max_first_logit_diff": g.max_first_logit_diff}}
    (ctx.out / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    bad = failures(report)
    if bad:
        raise BuildError(f"generation parity failed for {ctx.bundle.name}: {'; '.join(bad)}")
    ctx.log(f"gen_parity:{ctx.bundle.name}: int8 greedy agreement {report['int8']['agreement']:.2%}")
    return report


def failures(report: Report) -> list[str]:
    fp32, int8, lim = report["fp32"], report["int8"], report["limits"]
    found = []
    if fp32["agreement"] < 1.0 or fp32["first_logit_diff"] > FP32_LOGIT_DIFF:
        found.append(f"fp32 ONNX agrees on {fp32['agreement']:.2%} of greedy steps, first-step "
                     f"logit diff {fp32['first_logit_diff']:.3g} (limits 100%, {FP32_LOGIT_DIFF:g}):"
                     " the export is not faithful")
    if int8["agreement"] < lim["min_agreement"]:
        found.append(f"int8 agrees on {int8['agreement']:.2%} of greedy steps < "
                     f"{lim['min_agreement']:.2%}")
    if int8["first_logit_diff"] > lim["max_first_logit_diff"]:
        found.append(f"int8 first-step logit diff {int8['first_logit_diff']:.3g} > "
                     f"{lim['max_first_logit_diff']:g}")
    return found
