"""`quantize: auto` on a BERT-base-sized classifier (~110M parameters) made by code.

    .venv/bin/python bench/bench_quantize_auto.py [--threads N] [--keep DIR] [--limit 0.01]

A seeded BertForSequenceClassification with BERT-base's shape (hidden 768, 12 layers, 12 heads,
FFN 3072, vocab 30522, 8 labels) is trained for a few steps, so its scores sit close together
near the shipped thresholds, the case where int8 flips decisions. A throwaway project builds it
with `quantize: auto` at the shipped 1 % flip gate through the real graph (doit); the int8 task
is timed alone (the search's wall time). The table then lists every candidate the search scored:
size, the parity figures the stage recorded (flip rate and top-label agreement at the shipped
thresholds), and CPU latency at batch 1 and 32 beside fp32 ONNX Runtime, each candidate
re-quantized here with the settings the stage recorded. The peers the issue names are rows of
the same table: the old default (`default`), the best single candidate (lowest flip rate) and
fp32. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LABELS = ("cpt_bronchoscopy", "cpt_ebus", "cpt_biopsy", "laterality_left", "laterality_right",
          "sedation_moderate", "sedation_general", "complication")
SPEC = """\
apiVersion: modelkiln/v1
kind: Bundle
name: bench
version: "1.0.0"
source: {{checkpoint: bench/checkpoint, task: multi-label-classification}}
labels: {{order: bench/label_order.json, fields: bench/registry_label_fields.json}}
thresholds: {{strategy: f1-optimal, default: 0.5, calibration: bench/calibration.jsonl}}
backends:
  pytorch: {{}}
  onnx:
    parity: {{atol: 1.0e-3, max_decision_flip_rate: {limit}}}
"""


def make_inputs(directory: Path, steps: int, head_only: bool = False) -> int:
    """The BERT-base-shaped checkpoint, label files, 200 calibration rows; -> parameters."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from modelkiln import demo

    rows = demo.synthetic_rows(LABELS, 600, seed=21)
    tok = demo.make_tokenizer([r["text"] for r in rows], directory / "checkpoint")
    torch.manual_seed(21)
    config = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                        num_attention_heads=12, intermediate_size=3072,
                        max_position_embeddings=512, num_labels=len(LABELS),
                        id2label=dict(enumerate(LABELS)),
                        label2id={lab: i for i, lab in enumerate(LABELS)},
                        problem_type="multi_label_classification")
    model = BertForSequenceClassification(config)
    params = list(model.classifier.parameters()) if head_only else list(model.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3 if head_only else 1e-4)
    if head_only:  # the seeded body is kept; only the head learns, on features computed once
        model.eval()
        enc = tok([r["text"] for r in rows], padding=True, return_tensors="pt")
        with torch.inference_mode():
            pooled = torch.cat([model.bert(**{k: v[i:i + 32] for k, v in enc.items()}).pooler_output
                                for i in range(0, len(rows), 32)])
        mu, std = pooled.mean(0), pooled.std(0) + 1e-6
        pooled = (pooled - mu) / std
        y = torch.tensor([[float(lab in r["labels"]) for lab in LABELS] for r in rows])
        head = torch.nn.Linear(768, len(LABELS))
        hopt = torch.optim.AdamW(head.parameters(), lr=1e-2)
        for _ in range(300):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(pooled), y)
            hopt.zero_grad()
            loss.backward()
            hopt.step()
        with torch.no_grad():  # fold the feature standardization into the classifier
            model.classifier.weight.copy_(head.weight / std)
            model.classifier.bias.copy_(head.bias - (head.weight / std) @ mu)
        steps = 0
    model.train()
    for step in range(steps):
        batch = rows[(step * 16) % len(rows):][:16]
        enc = tok([r["text"] for r in batch], padding=True, return_tensors="pt")
        y = torch.tensor([[float(lab in r["labels"]) for lab in LABELS] for r in batch])
        loss = model(**enc, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(str(directory / "checkpoint"), safe_serialization=True)
    demo.write_label_files(directory, LABELS)
    demo.write_jsonl(directory / "calibration.jsonl", demo.synthetic_rows(LABELS, 200, seed=22))
    return sum(p.numel() for p in model.parameters())


def doit(root: Path, *tasks: str) -> tuple[int, str, float]:
    t = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "doit"), *tasks], cwd=root,
                          capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - t


def latency(path: Path, feed1: dict, feed32: dict, threads: int, iters: int) -> tuple[float, float]:
    """Median ms at batch 1 (over `iters` texts) and batch 32 (3 runs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    out = []
    for feed, n in ((feed1, iters), (feed32, 3)):
        f = {k: v for k, v in feed.items() if k in names}
        session.run(["logits"], f)
        xs = []
        for _ in range(n):
            t = time.perf_counter()
            session.run(["logits"], f)
            xs.append((time.perf_counter() - t) * 1000)
        out.append(statistics.median(xs))
    return out[0], out[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--iters-1", type=int, default=10)
    ap.add_argument("--train-steps", type=int, default=12)
    ap.add_argument("--limit", type=float, default=0.01, help="the flip gate (shipped: 0.01)")
    ap.add_argument("--head-only", action="store_true",
                    help="train only the classifier head (on the seeded body's pooled features)")
    ap.add_argument("--keep", type=Path, help="build the project here and keep it")
    args = ap.parse_args()

    import numpy as np
    from transformers import AutoTokenizer

    from modelkiln.model.bundle import Quantize
    from modelkiln.stages.int8 import OUTPUT, _quantize

    root = args.keep or Path(tempfile.mkdtemp(prefix="kiln-bench-qauto-"))
    (root / "bundles").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    (root / "bundles" / "bench.yaml").write_text(SPEC.format(limit=args.limit))
    inputs = root / "bundles" / "bench"
    t0 = time.perf_counter()
    if not (inputs / "checkpoint" / "model.safetensors").is_file():
        n_params = make_inputs(inputs, args.train_steps, args.head_only)
    else:
        from safetensors import safe_open

        with safe_open(str(inputs / "checkpoint" / "model.safetensors"), "np") as f:
            n_params = sum(int(np.prod(f.get_slice(k).get_shape()))
                           for k in f.keys())  # noqa: SIM118 - safe_open has no iteration
    t_make = time.perf_counter() - t0
    code, out, t_before = doit(root, "thresholds:bench", "onnx:bench")
    if code:
        print(out, file=sys.stderr)
        return 1
    code, out, t_search = doit(root, "int8:bench")
    build = root / "build" / "bench"
    if code == 0:
        record = json.loads((build / ".stamps" / "int8.json").read_text())["report"]["auto"]
    else:
        failed = build / "int8.failed" / "quantize_auto.json"
        if not failed.is_file():
            print(out, file=sys.stderr)
            return 1
        record = json.loads(failed.read_text())
        record["chosen"] = None
        print(out.strip().splitlines()[-1][:2000])
    fp32 = build / "onnx" / "model.onnx"
    fp32_bytes = sum(p.stat().st_size for p in (build / "onnx").iterdir())

    tok = AutoTokenizer.from_pretrained(str(build / "tokenizer" / "tokenizer"))
    texts = [json.loads(line)["text"] for line in (inputs / "calibration.jsonl").open()]
    feed1 = dict(tok(texts[:1], return_tensors="np"))
    feed32 = dict(tok(texts[:32], padding=True, return_tensors="np"))
    feed1 = {k: v.astype(np.int64) for k, v in feed1.items()}
    feed32 = {k: v.astype(np.int64) for k, v in feed32.items()}
    ref1, ref32 = latency(fp32, feed1, feed32, args.threads, args.iters_1)

    class Ctx:  # what _quantize reads for static mode: tokenizer, calibration, max_length
        def __init__(self) -> None:
            from modelkiln.api import load_bundles

            self.bundle = load_bundles([root / "bundles" / "bench.yaml"])[0]

        def up(self, stage: str) -> Path:
            return build / stage

    ctx = Ctx()
    rows = []
    scored = [c for c in record["candidates"] if "decision_flip_rate" in c]
    best = min(scored, key=lambda c: c["decision_flip_rate"])["name"] if scored else None
    scratch = Path(tempfile.mkdtemp(prefix="kiln-bench-qcand-"))
    for c in record["candidates"]:
        if "decision_flip_rate" not in c:
            rows.append(f"| {c['name']} | skipped: {c.get('skipped', '')} | | | | | | |")
            continue
        s = c["settings"]
        q = Quantize(s["mode"], s["weight_type"], s["per_channel"], s["reduce_range"],
                     tuple(s["op_types"]) or None, inputs / "calibration.jsonl",
                     tuple(s["exclude_nodes"]))
        dst = scratch / c["name"]
        dst.mkdir()
        _quantize(ctx, q, fp32, dst / OUTPUT, large=False)  # type: ignore[arg-type]
        l1, l32 = latency(dst / OUTPUT, feed1, feed32, args.threads, args.iters_1)
        shutil.rmtree(dst)
        tags = [t for t, on in (("auto's pick", c.get("chosen")), ("old default",
                                c["name"] == "default"), ("best flips", c["name"] == best)) if on]
        rows.append(f"| {c['name']}{' (' + ', '.join(tags) + ')' if tags else ''} | "
                    f"{c['bytes'] / 1e6:.1f} ({c['size_ratio']:.0%}) | "
                    f"{c['decision_flip_rate']:.2%} | {c['top_label_agreement']:.2%} | "
                    f"{'pass' if c['passed'] else 'fail'} | {l1:.1f} ({ref1 / l1:.2f}x) | "
                    f"{l32:.0f} ({ref32 / l32:.2f}x) | "
                    f"{', '.join(n.rsplit('/', 2)[-2] for n in s['exclude_nodes']) or '-'} |")
    shutil.rmtree(scratch)
    trained = "head fitted on pooled features" if args.head_only else \
        f"{args.train_steps} training steps"
    print(f"model: BERT-base shape, {n_params / 1e6:.1f}M parameters, {trained} "
          f"({t_make:.0f} s incl. tokenizer); weights+thresholds+onnx {t_before:.0f} s")
    print(f"CPU: {record['cpu_class']}, {args.threads} threads; {record['rows']} parity rows, "
          f"gate {record['max_decision_flip_rate']:.2%}")
    print(f"quantize: auto search (doit int8:bench, wall): {t_search:.0f} s; picked: "
          f"{record.get('chosen') or 'none (build fails with the hint above)'}\n")
    print("| candidate | size MB (of fp32) | flip rate | top-label agreement | gate | "
          "batch 1 ms (vs fp32) | batch 32 ms (vs fp32) | kept in float |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| fp32 ONNX Runtime | {fp32_bytes / 1e6:.1f} (100%) | - | - | - | {ref1:.1f} | "
          f"{ref32:.0f} | all |")
    print("\n".join(rows))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
