"""gen_parity: a decoder LLM's ONNX models must decode as PyTorch does, or the bundle fails.

PyTorch decodes each calibration prompt greedily for `generation.steps` tokens. The ONNX models
then decode the same steps as `predict` serves them, through their KV cache: the prompt with an
empty past, then one token per step with the previous step's present key/values fed back as
past_key_values. The token fed is PyTorch's pick (teacher forcing, so one early disagreement
does not count every later step against the model), and at each step the graph picks its own
greedy token: agreement is the share of steps where it is PyTorch's. The largest |logit
difference| is reported for the first step (the prompt, empty past) and over every step (the
cached ones). fp32 ONNX must agree on every step with both differences under 1e-3 (the export is
exact up to rounding, so a larger difference after the first step is a broken past: positions,
mask or cache); int8 within `generation.parity`. A graph without past_key_values inputs is
refused.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..artifacts import names
from ..errors import BuildError
from ..model.bundle import Bundle
from ..model.calibration import json_texts
from ..model.files import BadFile
from ..paths import Layout
from .base import Report, RunContext, StagePlan, params, stage_plan

REPORT = "generation_parity.json"
FP32_LOGIT_DIFF = 1e-3
NAME = "gen_parity"
DOC = ("gate a decoder LLM: greedy next-token agreement and logits of ONNX (through its KV cache) "
       "vs PyTorch")
READS: tuple[str, ...] = ("weights", "tokenizer", "onnx", "int8")
WRITES: tuple[str, ...] | None = (REPORT,)
OPTIONAL: tuple[str, ...] = ()  # outputs a run may leave out (stages.base.Stage)
TOOLS: tuple[str, ...] = ("torch", "transformers", "tokenizers", "onnxruntime")
PLATFORM: str | None = None
CODE_VERSION = "2"  # 2: decodes through the KV cache


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
    try:
        prompts = json_texts(path, ("prompt", "text"), '{"prompt": "..."}')
    except BadFile as exc:
        raise exc.build_error() from None
    if not prompts:
        raise BuildError(f"{path}: no prompts")
    return prompts


def greedy(model: Any, ids: list[int], steps: int) -> tuple[list[int], Any]:
    """PyTorch's greedy continuation (recomputed over the whole sequence per step: exact, and
    tiny here) and its logits at every step, shape (steps, vocabulary)."""
    import numpy as np
    import torch

    seq, rows = list(ids), []
    with torch.inference_mode():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1].float().numpy()
            rows.append(logits)
            seq.append(int(logits.argmax()))
    return seq[len(ids):], np.stack(rows)


def past_names(session: Any) -> list[str]:
    """The graph's past_key_values inputs; a graph without them is refused (the export must be
    optimum's with-past decoder, not the monolith that recomputes the sequence per step)."""
    inputs = [i.name for i in session.get_inputs()]
    past = [n for n in inputs if n.startswith("past_key_values.")]
    outputs = {o.name for o in session.get_outputs()}
    unknown = [n for n in inputs if n not in ("input_ids", "attention_mask", "position_ids")
               and n not in past]
    if unknown or not past or "logits" not in outputs or \
            any(n.replace("past_key_values", "present", 1) not in outputs for n in past):
        raise BuildError(f"the generation graph takes {inputs} and answers {sorted(outputs)[:4]}"
                         "...; the gate decodes a with-past graph (input_ids, attention_mask, "
                         "position_ids, past_key_values.* in; logits, present.* out): re-export "
                         "it with text-generation-with-past")
    return past


def decode(session: Any, config: dict[str, Any], ids: list[int], gen: list[int]) -> Any:
    """Logits of each of len(gen) greedy steps from the with-past graph: the prompt with an
    empty past, then one token per step with the previous step's presents fed back as the past,
    the token fed being PyTorch's pick (teacher forcing). Shape (len(gen), vocabulary)."""
    import numpy as np

    past = past_names(session)
    heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
    cache = {n: np.zeros((1, heads, 0, head_dim), dtype=np.float32) for n in past}
    wanted = ["logits", *(n.replace("past_key_values", "present", 1) for n in past)]
    rows, chunk, start = [], list(ids), 0
    for token in gen:
        end = start + len(chunk)
        feed = {"input_ids": np.asarray([chunk], dtype=np.int64),
                "attention_mask": np.ones((1, end), dtype=np.int64),
                "position_ids": np.arange(start, end, dtype=np.int64)[None], **cache}
        got = session.run(wanted, {i.name: feed[i.name] for i in session.get_inputs()})
        rows.append(got[0][0, -1])
        cache = dict(zip(past, got[1:], strict=True))
        chunk, start = [token], end
    return np.stack(rows)


def measure(session: Any, config: dict[str, Any], cases: list[tuple[list[int], list[int], Any]]
            ) -> dict[str, float]:
    """Agreement (share of steps whose argmax is PyTorch's token), the first step's and every
    step's largest |logit difference|, over (prompt ids, PyTorch's tokens, its logits) cases."""
    import numpy as np

    agree, total, first, every = 0, 0, 0.0, 0.0
    for ids, gen, ref in cases:
        logits = decode(session, config, ids, gen)
        agree += int((logits.argmax(axis=1) == np.asarray(gen)).sum())
        total += len(gen)
        diff = np.abs(logits - ref).max(axis=1)
        first, every = max(first, float(diff[0])), max(every, float(diff.max()))
    return {"agreement": round(agree / total, 6), "first_logit_diff": float(f"{first:.6g}"),
            "max_logit_diff": float(f"{every:.6g}")}


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
        gen, logits = greedy(model.eval(), ids, g.steps)
        cases.append((ids, gen, logits))
    int8 = ort_session(ctx.up("int8") / INT8)
    report: Report = {"rows": len(cases), "steps": g.steps,
                      "past_key_values": past_names(int8),  # what the shipped graph takes
                      "fp32": measure(ort_session(ctx.up("onnx") / MODEL), config, cases),
                      "int8": measure(int8, config, cases),
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
    if fp32["first_logit_diff"] > FP32_LOGIT_DIFF:
        found.append(f"fp32 ONNX agrees on {fp32['agreement']:.2%} of greedy steps, first-step "
                     f"logit diff {fp32['first_logit_diff']:.3g} (limits 100%, {FP32_LOGIT_DIFF:g}):"
                     " the export is not faithful")
    elif fp32["agreement"] < 1.0 or fp32["max_logit_diff"] > FP32_LOGIT_DIFF:
        found.append(f"fp32 ONNX matches PyTorch on the first step but agrees on "
                     f"{fp32['agreement']:.2%} of greedy steps with logits up to "
                     f"{fp32['max_logit_diff']:.3g} apart after it (limits 100%, "
                     f"{FP32_LOGIT_DIFF:g}): the graph does not read its past key/values as "
                     "PyTorch's cache (positions, attention mask or the cache itself)")
    if int8["agreement"] < lim["min_agreement"]:
        found.append(f"int8 agrees on {int8['agreement']:.2%} of greedy steps < "
                     f"{lim['min_agreement']:.2%}")
    if int8["first_logit_diff"] > lim["max_first_logit_diff"]:
        found.append(f"int8 first-step logit diff {int8['first_logit_diff']:.3g} > "
                     f"{lim['max_first_logit_diff']:g}")
    return found
