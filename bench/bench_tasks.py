"""Per task kind: int8 size share of fp32, int8 vs fp32 ONNX Runtime latency at batch 1 and 32,
and the gate's own figures, on the example model and on a larger one built the same way.

    .venv/bin/python bench/bench_tasks.py [--threads 1] [--iters-1 50] [--iters-32 10] [--keep DIR]
                                          [--no-large]

Each model is made by code with a fixed seed (modelkiln.demo_fleet), built through the real
graph (`doit build:<name>` in a throwaway project), and measured from the build's outputs: the
onnx stage's fp32 model beside the int8 stage's model (the peer is fp32 ONNX Runtime, same
inputs, same threads, measured in the same run), and the gate figures the bundle's manifest
records. Goals (reported, never asserted): int8 <= 30 % of fp32 size and >= 1.5x fp32 speed for
the encoder tasks; cosine >= 0.99 for embeddings.

Rows, each an example model and a larger one made the same way: `memory` (BERT hidden 64, 2
layers) and `memory-large` (hidden 384, 6 layers: all-MiniLM-L6-v2's shape on the synthetic
vocabulary); `vision` (ViT 32 px, hidden 64, 2 layers) and `vision-large` (96 px, patch 8,
hidden 384, 6 layers); `analyst` (Llama hidden 64, 2 layers) and `analyst-large` (hidden 512, 8
layers); `tagger` (BERT hidden 64, 2 layers) and `tagger-large` (hidden 384, 6 layers). For
text-generation the timed run is one prefill pass over the prompt (empty past).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EMBED_SPEC = """\
apiVersion: modelkiln/v1
kind: Bundle
name: {name}
version: "1.0.0"
source: {{checkpoint: {name}/checkpoint, task: feature-extraction}}
embedding:
  calibration: {name}/calibration.jsonl
  parity: {{min_cosine: -1, min_fp32_cosine: -1, min_topk_agreement: 0}}  # report; never fail
backends:
  onnx:
    quantize: {{mode: dynamic, weight_type: int8, per_channel: true}}
"""
VISION_SPEC = """\
apiVersion: modelkiln/v1
kind: Bundle
name: {name}
version: "1.0.0"
source: {{checkpoint: {name}/checkpoint, task: image-classification}}
labels: {{order: {name}/label_order.json, fields: {name}/registry_label_fields.json}}
thresholds: {{strategy: fixed, default: 0.4, calibration: {name}/calibration.jsonl}}
backends:
  onnx:
    quantize: {{mode: dynamic, weight_type: int8, per_channel: true}}
    parity: {{atol: 1.0, max_decision_flip_rate: 1.0}}  # report; never fail
"""
GEN_SPEC = """\
apiVersion: modelkiln/v1
kind: Bundle
name: {name}
version: "1.0.0"
source: {{checkpoint: {name}/checkpoint, task: text-generation}}
generation:
  calibration: {name}/prompts.jsonl
  steps: 8
  parity: {{min_agreement: 0, max_first_logit_diff: 1000}}  # report; never fail
backends:
  onnx:
    quantize: {{mode: dynamic, weight_type: int8, per_channel: true, exclude_nodes: [/lm_head/MatMul]}}
"""
# name -> (task, make kwargs)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "memory": ("feature-extraction", {}),
    "memory-large": ("feature-extraction", {"hidden": 384, "layers": 6, "steps": 60, "lr": 2e-4}),
    "vision": ("image-classification", {}),
    "vision-large": ("image-classification", {"hidden": 384, "layers": 6, "size": 96,
                                              "steps": 15, "lr": 2e-4}),
    "tagger": ("token-classification", {}),
    "tagger-large": ("token-classification", {"hidden": 384, "layers": 6, "steps": 60, "lr": 2e-4}),
    "analyst": ("text-generation", {}),
    "analyst-large": ("text-generation", {"hidden": 512, "layers": 8, "steps": 40, "lr": 5e-4,
                                          "shard": "20MB"}),
}
NER_SPEC = """\
apiVersion: modelkiln/v1
kind: Bundle
name: {name}
version: "1.0.0"
source: {{checkpoint: {name}/checkpoint, task: token-classification}}
labels: {{order: {name}/label_order.json, fields: {name}/registry_label_fields.json}}
entities: {{calibration: {name}/calibration.jsonl, parity: {{min_agreement: 0}}}}  # report
backends:
  onnx:
    quantize: {{mode: dynamic, weight_type: int8, per_channel: true}}
    parity: {{atol: 1.0}}
"""
SPECS = {"feature-extraction": EMBED_SPEC, "image-classification": VISION_SPEC,
         "text-generation": GEN_SPEC, "token-classification": NER_SPEC}
GATES = {"feature-extraction": "embed_parity", "image-classification": "vision_parity",
         "text-generation": "gen_parity", "token-classification": "ner_parity"}


def build(root: Path, name: str, task: str, make: dict[str, Any]) -> None:
    from modelkiln import demo_fleet

    inputs = root / "bundles" / name
    if not (inputs / "checkpoint").is_dir():
        if task == "feature-extraction":
            texts = demo_fleet.make_embedding_checkpoint(inputs / "checkpoint", **make)
            demo_fleet.write_texts(inputs / "calibration.jsonl", texts)
        elif task == "image-classification":
            held_out = demo_fleet.make_vision_checkpoint(inputs / "checkpoint", **make)
            demo_fleet.write_label_files(inputs, demo_fleet.VISION_LABELS)
            demo_fleet.write_images(inputs / "images", held_out[:60], inputs / "calibration.jsonl")
        elif task == "token-classification":
            texts = demo_fleet.make_ner_checkpoint(inputs / "checkpoint", **make)
            demo_fleet.write_texts(inputs / "calibration.jsonl", texts)
            (inputs / "label_order.json").write_text(json.dumps(list(demo_fleet.NER_LABELS)))
            (inputs / "registry_label_fields.json").write_text(json.dumps(
                {lab: {"entity": lab[2:] or "none"} for lab in demo_fleet.NER_LABELS}))
        else:
            prompts = demo_fleet.make_generation_checkpoint(inputs / "checkpoint", **make)
            (inputs / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n"
                                                          for p in prompts[:24]))
    (root / "bundles" / f"{name}.yaml").write_text(SPECS[task].format(name=name))
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    done = subprocess.run([str(BIN / "doit"), f"build:{name}"], cwd=root, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"build of {name} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def latency(model: Path, feeds: dict[str, Any], threads: int, iters: int) -> float:
    """Median seconds of one run over `feeds` (after two warm-up runs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    feed = {k: v for k, v in feeds.items() if k in wanted}
    for _ in range(2):
        session.run(None, feed)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def feeds_for(root: Path, name: str, task: str, batch: int) -> dict[str, Any]:
    """Inputs of one batch: calibration texts / images / prompts as the gate reads them."""
    import numpy as np

    build_dir, inputs = root / "build" / name, root / "bundles" / name
    if task == "image-classification":
        from modelkiln.stages import vision_parity

        images, _ = vision_parity.read_images(inputs / "calibration.jsonl",
                                              ("red", "green", "blue"), batch)
        return {"pixel_values": vision_parity.pixels(build_dir / "image_processor", images)}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(build_dir / "tokenizer" / "tokenizer"))
    if task == "text-generation":  # one full-prompt pass (prefill) per row, empty past
        prompts = [json.loads(line)["prompt"] for line in
                   (inputs / "prompts.jsonl").read_text().splitlines()]
        prompts = (prompts * 2)[:batch]
        enc = tok(prompts, padding=True, return_tensors="np")
        n = enc["input_ids"].shape[1]
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "position_ids": np.tile(np.arange(n, dtype=np.int64), (batch, 1))}
    texts = [json.loads(line)["text"] for line in
             (inputs / "calibration.jsonl").read_text().splitlines()[:batch]]
    return dict(tok(texts, padding=True, return_tensors="np"))


def gate_text(task: str, gate: dict[str, Any]) -> str:
    if task == "feature-extraction":
        return (f"int8 cosine min {gate['int8']['min_cosine']:.4f} mean "
                f"{gate['int8']['mean_cosine']:.4f}; top-{gate['limits']['top_k']} "
                f"{gate['int8']['topk_agreement']:.1%} ({gate['rows']} texts)")
    if task == "image-classification":
        return (f"int8 top-1 agreement {gate['int8']['top_label_agreement']:.1%}, flips "
                f"{gate['int8']['decision_flip_rate']:.2%}; fp32 max logit diff "
                f"{gate['fp32']['max_abs_logit_diff']:.2g} ({gate['rows']} images)")
    if task == "token-classification":
        worst = min(gate["int8"]["per_label"].values())
        return (f"int8 entity agreement {gate['int8']['agreement']:.1%} (worst label "
                f"{worst:.1%}); fp32 {gate['fp32']['agreement']:.0%} ({gate['rows']} texts, "
                f"{gate['int8']['entities']} entities)")
    return (f"int8 greedy agreement {gate['int8']['agreement']:.1%}, first-step logit diff "
            f"{gate['int8']['first_logit_diff']:.3g}; fp32 {gate['fp32']['agreement']:.0%} "
            f"({gate['rows']} prompts x {gate['steps']} steps)")


def measure(root: Path, name: str, task: str, args: argparse.Namespace) -> dict[str, Any]:
    build_dir = root / "build" / name
    fp32, int8 = build_dir / "onnx" / "model.onnx", build_dir / "int8" / "registry_model_int8.onnx"
    row = {"model": name, "int8_share": int8.stat().st_size / fp32.stat().st_size,
           "fp32_mb": fp32.stat().st_size / 1e6}
    for batch, iters in ((1, args.iters_1), (32, args.iters_32)):
        feeds = feeds_for(root, name, task, batch)
        t32 = latency(fp32, feeds, args.threads, iters)
        t8 = latency(int8, feeds, args.threads, iters)
        row[f"b{batch}"] = (t32 * 1e3, t8 * 1e3, t32 / t8)
    manifest = json.loads((root / "dist" / name / "1.0.0" / "onnx" / "manifest.json").read_text())
    row["gate"] = gate_text(task, manifest["parity"][GATES[task]])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (default 1)")
    parser.add_argument("--iters-1", type=int, default=50, help="timed runs at batch 1 (default 50)")
    parser.add_argument("--iters-32", type=int, default=10, help="timed runs at batch 32 (default 10)")
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the project in this directory")
    parser.add_argument("--no-large", action="store_true", help="only the example models")
    parser.add_argument("--only", help="only the models whose name starts with this")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-tasks-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for name, (task, make) in MODELS.items():
            if (args.no_large and name.endswith("-large")) or \
                    (args.only and not name.startswith(args.only)):
                continue
            start = time.perf_counter()
            build(root, name, task, make)
            row = measure(root, name, task, args)
            row["task"], row["build_s"] = task, time.perf_counter() - start
            rows.append(row)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"threads {args.threads}; peer: fp32 ONNX Runtime, same inputs; times are medians")
    print("| task | model | fp32 MB | int8 size / fp32 | batch 1 fp32 / int8 ms (speed-up) | "
          "batch 32 fp32 / int8 ms (speed-up) | gate | inputs + build s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        b1, b32 = r["b1"], r["b32"]
        print(f"| {r['task']} | {r['model']} | {r['fp32_mb']:.1f} | {r['int8_share']:.1%} | "
              f"{b1[0]:.2f} / {b1[1]:.2f} ({b1[2]:.2f}x) | {b32[0]:.1f} / {b32[1]:.1f} "
              f"({b32[2]:.2f}x) | {r['gate']} | {r['build_s']:.0f} |")


if __name__ == "__main__":
    main()
