"""Per task kind: int8 size share of fp32, int8 vs fp32 ONNX Runtime latency at batch 1 and 32,
and the gate's own figures, on the example model, on a larger one built the same way, and up a
size ladder to the largest model that builds here within 10 minutes.

    .venv/bin/python bench/bench_tasks.py [--threads 1] [--least 5] [--budget-1 15]
        [--budget-32 30] [--keep DIR] [--no-large] [--only NAME] [--ladder] [--limit 600]
        [--rung HxL ...] [--rows FILE.jsonl]
    .venv/bin/python bench/bench_tasks.py --table-from A.jsonl B.jsonl   # one table of saved rows

Each model is made by code with a fixed seed (modelkiln.demo_fleet), built through the real
graph (`doit build:<name>` in a throwaway project), and measured from the build's outputs: the
onnx stage's fp32 model beside the int8 stage's model (the peer is fp32 ONNX Runtime, same
inputs, same threads), and the gate figures the bundle's manifest records. The two models run
interleaved, one run each in turn, so a load spike on this shared machine hits both; each batch
size gets at least --least pairs and more until its budget is spent, and the table gives the
medians and the median of the pairs' speed-ups with its quartiles, plus the 1-minute load
average before and after timing. Size is the whole int8 file (graph + weights + external data)
over fp32's, and in brackets the weights (initializers) alone. Goals (reported, never asserted):
int8 <= 30 % of fp32 size and >= 1.5x fp32 speed for the encoder tasks; cosine >= 0.99 for
embeddings; greedy agreement >= 95 % of steps for the generation model.

Rows: `memory` (BERT hidden 64, 2 layers) and `memory-large` (hidden 384, 6 layers:
all-MiniLM-L6-v2's shape on the synthetic vocabulary); `vision` (ViT 32 px, hidden 64, 2 layers)
and `vision-large` (96 px, patch 8, hidden 384, 6 layers); `analyst` (Llama hidden 64, 2
layers) and `analyst-large` (hidden 512, 8 layers); `tagger` (BERT hidden 64, 2 layers) and
`tagger-large` (hidden 384, 6 layers). For text-generation the timed run is one prefill pass over
the prompt (empty past). --ladder then climbs LADDER per task (`memory-768x12`: hidden 768, 12
layers; ViT rungs at 64 px), timing each rung's `doit build` apart from making its inputs (the
synthetic training, shortened as the model grows), and stops before a rung whose projected build
time (the last build times the ratio of hidden^2 x layers) is over --limit, or at a rung killed
at --limit.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
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
    quantize: auto  # the kind's default: fused, then dynamic int8 per channel
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
    quantize: auto  # the kind's default: fused, then dynamic int8 per channel
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
EXAMPLE = {"feature-extraction": "memory", "image-classification": "vision",
           "token-classification": "tagger", "text-generation": "analyst"}
# task -> (hidden, layers) rungs: depth doubles, then width (each rung 2x or 4x the weights);
# the climb stops before a rung projected past the limit
LADDER: dict[str, list[tuple[int, int]]] = {
    "feature-extraction": [(384, 6), (384, 12), (768, 12), (768, 24), (1536, 24)],
    "image-classification": [(384, 6), (384, 12), (768, 12), (768, 24), (1536, 24)],
    "token-classification": [(384, 6), (384, 12), (768, 12), (768, 24), (1536, 24)],
    "text-generation": [(512, 8), (512, 16), (1024, 16), (1024, 32), (2048, 32)],
}
# task -> (training steps, learning rate, hidden^2 x layers those steps are for)
LADDER_TRAIN: dict[str, tuple[int, float, int]] = {
    "feature-extraction": (60, 2e-4, 384 * 384 * 6),
    "image-classification": (15, 2e-4, 384 * 384 * 6),
    "token-classification": (60, 2e-4, 384 * 384 * 6),
    "text-generation": (40, 5e-4, 512 * 512 * 8),
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
    quantize: auto  # the kind's default: fused, then dynamic int8 per channel
    parity: {{atol: 1.0}}
"""
SPECS = {"feature-extraction": EMBED_SPEC, "image-classification": VISION_SPEC,
         "text-generation": GEN_SPEC, "token-classification": NER_SPEC}
GATES = {"feature-extraction": "embed_parity", "image-classification": "vision_parity",
         "text-generation": "gen_parity", "token-classification": "ner_parity"}


class BuildFailed(Exception):
    """A ladder rung's `doit build` failed: the climb stops there."""


def build(root: Path, name: str, task: str, make: dict[str, Any],
          timeout: float | None = None) -> tuple[float, float | None]:
    """Make the inputs (seeded checkpoint, calibration) and run `doit build:NAME`; returns the
    seconds each took, the build's None when it ran past `timeout` (then it is killed)."""
    from modelkiln import demo_fleet

    start = time.perf_counter()
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
    made = time.perf_counter()
    (root / "bundles" / f"{name}.yaml").write_text(SPECS[task].format(name=name))
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    with subprocess.Popen([str(BIN / "doit"), f"build:{name}"], cwd=root, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          start_new_session=True) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # doit and whatever it started
            proc.communicate()
            return made - start, None
    if proc.returncode:
        if timeout is None:  # an example or -large row: nothing to climb past
            raise SystemExit(f"build of {name} failed:\n{out[-6000:]}")
        last = [line for line in out.splitlines() if line.strip()][-1:] or [""]
        raise BuildFailed(f"exit {proc.returncode} after {time.perf_counter() - made:.0f} s "
                          f"(-9: killed, e.g. out of memory); last line: {last[0][:200]}")
    return made - start, time.perf_counter() - made


def session(model: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def with_empty_past(sess: Any, feeds: dict[str, Any]) -> dict[str, Any]:
    """The inputs `sess` takes; a with-past decoder gets an empty past (a prefill pass)."""
    import numpy as np

    feed = {}
    batch = next(iter(feeds.values())).shape[0]
    for i in sess.get_inputs():
        if i.name in feeds:
            feed[i.name] = feeds[i.name]
        elif i.name.startswith("past_key_values"):
            shape = [batch] + [d if isinstance(d, int) else 0 for d in i.shape[1:]]
            feed[i.name] = np.zeros(shape, dtype=np.float32)
    return feed


def timed_pairs(fp32: Path, int8: Path, feeds: dict[str, Any], threads: int, least: int,
                budget_s: float) -> tuple[float, float, float, float, float, int]:
    """fp32 and int8 runs interleaved (a load spike hits both), after two warm-up runs each, at
    least `least` pairs and more until `budget_s` is spent (at most 2000). Returns the fp32 and
    int8 medians (s), the median speed-up of the pairs, its 25th and 75th percentiles, and the
    number of pairs."""
    sessions = [session(fp32, threads), session(int8, threads)]
    feed = [with_empty_past(s, feeds) for s in sessions]
    for s, f in zip(sessions, feed, strict=True):
        for _ in range(2):
            s.run(None, f)
    times: list[list[float]] = [[], []]
    began = time.perf_counter()
    while len(times[0]) < least or (time.perf_counter() - began < budget_s
                                    and len(times[0]) < 2000):
        for k in (0, 1):
            start = time.perf_counter()
            sessions[k].run(None, feed[k])
            times[k].append(time.perf_counter() - start)
    ratios = sorted(a / b for a, b in zip(*times, strict=True))
    q1, q3 = statistics.quantiles(ratios, n=4)[0::2] if len(ratios) > 1 else (ratios[0],) * 2
    return (statistics.median(times[0]), statistics.median(times[1]), statistics.median(ratios),
            q1, q3, len(ratios))


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


def weights_share(fp32: Path, int8: Path) -> float:
    """int8 initializer bytes over fp32's: the weights alone, without the graph's nodes."""
    import onnx
    from onnx import numpy_helper

    def weight_bytes(path: Path) -> int:
        return sum(numpy_helper.to_array(t, base_dir=str(path.parent)).nbytes
                   for t in onnx.load(str(path), load_external_data=False).graph.initializer)
    return weight_bytes(int8) / weight_bytes(fp32)


def measure(root: Path, name: str, task: str, args: argparse.Namespace) -> dict[str, Any]:
    from modelkiln.stages.onnx import check_external_data

    build_dir = root / "build" / name
    fp32, int8 = build_dir / "onnx" / "model.onnx", build_dir / "int8" / "registry_model_int8.onnx"
    size = [sum((p.parent / n).stat().st_size for n in [p.name, *check_external_data(p)])
            for p in (fp32, int8)]
    params = sum(f.stat().st_size for f in (root / "bundles" / name / "checkpoint").glob(
        "*.safetensors")) / 4  # fp32 checkpoints: 4 bytes a parameter
    row: dict[str, Any] = {"model": name, "int8_share": size[1] / size[0], "fp32_mb": size[0] / 1e6,
                           "weights_share": weights_share(fp32, int8), "params_m": params / 1e6,
                           "load": [round(x, 1) for x in os.getloadavg()]}
    for batch, budget in ((1, args.budget_1), (32, args.budget_32)):
        feeds = feeds_for(root, name, task, batch)
        t32, t8, ratio, q1, q3, n = timed_pairs(fp32, int8, feeds, args.threads, args.least,
                                                budget)
        row[f"b{batch}"] = (t32 * 1e3, t8 * 1e3, ratio, q1, q3, n)
    row["load"] += [round(x, 1) for x in os.getloadavg()]
    manifest = json.loads((root / "dist" / name / "1.0.0" / "onnx" / "manifest.json").read_text())
    row["gate"] = gate_text(task, manifest["parity"][GATES[task]])
    stamp = json.loads((build_dir / ".stamps" / "int8.json").read_text())
    row["fuse"] = stamp["report"].get("fuse") or "none"
    return row


def ladder_make(task: str, hidden: int, layers: int) -> dict[str, Any]:
    """A ladder rung's checkpoint settings: fewer training steps as the model grows (the
    synthetic training is not the build; it stays around two minutes on one core)."""
    base_steps, base_lr, base = LADDER_TRAIN[task]
    steps = max(4, min(base_steps, round(base_steps * base / (hidden * hidden * layers))))
    make: dict[str, Any] = {"hidden": hidden, "layers": layers, "steps": steps, "lr": base_lr}
    if task == "image-classification":
        make["size"] = 64
    if task == "text-generation":
        make["shard"] = "200MB"
    return make


def run_one(root: Path, name: str, task: str, make: dict[str, Any], args: argparse.Namespace,
            rows_file: Path | None, timeout: float | None = None) -> dict[str, Any] | None:
    inputs_s, build_s = build(root, name, task, make, timeout)
    if build_s is None:
        return None
    row = measure(root, name, task, args)
    row.update(task=task, inputs_s=inputs_s, build_s=build_s, make=make)
    if rows_file is not None:
        with rows_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def ladder(root: Path, task: str, args: argparse.Namespace, rows_file: Path | None,
           notes: list[str]) -> list[dict[str, Any]]:
    """Climb LADDER[task] with the real build path: each rung is built (`doit build`, killed at
    the limit) and measured; the climb stops at the first rung that runs past the limit, or
    before a rung whose projected build time (the last build's seconds times the ratio of
    hidden^2 x layers) is over the limit."""
    rows: list[dict[str, Any]] = []
    last: tuple[int, float] | None = None  # (hidden^2 x layers, build s) of the last rung
    for hidden, layers in LADDER[task]:
        name = f"{EXAMPLE[task]}-{hidden}x{layers}"
        if args.rung and f"{hidden}x{layers}" not in args.rung:
            continue
        size = hidden * hidden * layers
        if last is not None and last[1] * size / last[0] > args.limit:
            notes.append(f"{task}: {name} not built: projected {last[1] * size / last[0]:.0f} s "
                         f"(last build {last[1]:.0f} s x {size / last[0]:.2f}) > {args.limit:.0f} s")
            break
        make = ladder_make(task, hidden, layers)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: building {make}", file=sys.stderr,
              flush=True)
        try:
            row = run_one(root, name, task, make, args, rows_file, timeout=args.limit)
        except BuildFailed as exc:
            notes.append(f"{task}: {name} did not build: {exc}")
            break
        if row is None:
            notes.append(f"{task}: {name} ran past {args.limit:.0f} s and was killed")
            break
        print(f"[{time.strftime('%H:%M:%S')}] {name}: built in {row['build_s']:.0f} s",
              file=sys.stderr, flush=True)
        rows.append(row)
        last = (size, row["build_s"])
        shutil.rmtree(root / "dist" / name, ignore_errors=True)  # disk: only the figures stay
    return rows


def print_table(rows: list[dict[str, Any]], notes: list[str], threads: int) -> None:
    print(f"threads {threads}; peer: fp32 ONNX Runtime, same inputs, runs interleaved with int8; "
          "times are medians; speed-up is the median of the pairs' ratios [quartiles], n pairs")
    print("| task | model | params M | fp32 MB | int8 size / fp32 (weights only) | batch 1 fp32 / "
          "int8 ms, speed-up | batch 32 fp32 / int8 ms, speed-up | gate | fuse | build s "
          "(+ inputs s) | load 1-min before / after timing |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = []
        for b in ("b1", "b32"):
            t32, t8, ratio, q1, q3, n = r[b]
            cells.append(f"{t32:.3g} / {t8:.3g}, {ratio:.2f}x [{q1:.2f}-{q3:.2f}] n={n}")
        print(f"| {r['task']} | {r['model']} | {r['params_m']:.1f} | {r['fp32_mb']:.1f} | "
              f"{r['int8_share']:.1%} ({r['weights_share']:.1%}) | {cells[0]} | {cells[1]} | "
              f"{r['gate']} | {r['fuse']} | {r['build_s']:.0f} (+{r['inputs_s']:.0f}) | "
              f"{r['load'][0]} / {r['load'][3]} |")
    for note in notes:
        print(f"- {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (default 1)")
    parser.add_argument("--least", type=int, default=5,
                        help="timed fp32/int8 pairs at least, per batch size (default 5)")
    parser.add_argument("--budget-1", type=float, default=15.0,
                        help="seconds of timed pairs at batch 1, beyond --least (default 15)")
    parser.add_argument("--budget-32", type=float, default=30.0,
                        help="seconds of timed pairs at batch 32, beyond --least (default 30)")
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the project in this directory")
    parser.add_argument("--no-large", action="store_true", help="only the example models")
    parser.add_argument("--only", help="only the models (and ladders) whose name starts with this")
    parser.add_argument("--ladder", action="store_true",
                        help="after the examples, climb each task's size ladder (LADDER)")
    parser.add_argument("--limit", type=float, default=600.0,
                        help="ladder: build seconds a rung may take (default 600)")
    parser.add_argument("--rung", nargs="+", metavar="HxL",
                        help="ladder: only these rungs (e.g. 1024x16), built whatever the "
                             "projection says, killed at --limit")
    parser.add_argument("--rows", type=Path, help="append each row as JSON to this file")
    parser.add_argument("--table-from", type=Path, nargs="*",
                        help="only print the table of rows saved by --rows (one or more files)")
    args = parser.parse_args()
    notes: list[str] = []
    if args.table_from:
        rows = [json.loads(line) for f in args.table_from for line in f.read_text().splitlines()
                if line.startswith("{")]
        notes = [json.loads(line)["note"] for f in args.table_from
                 for line in f.read_text().splitlines() if line.startswith('{"note"')]
        print_table([r for r in rows if "model" in r], notes, args.threads)
        return
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-tasks-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for name, (task, make) in MODELS.items():
            if (args.no_large and name.endswith("-large")) or \
                    (args.only and not name.startswith(args.only)):
                continue
            row = run_one(root, name, task, make, args, args.rows)
            assert row is not None
            rows.append(row)
        if args.ladder:
            for task, example in EXAMPLE.items():
                if args.only and not example.startswith(args.only):
                    continue
                before = len(notes)
                rows += ladder(root, task, args, args.rows, notes)
                if args.rows is not None:
                    with args.rows.open("a") as f:
                        f.writelines(json.dumps({"note": n}) + "\n" for n in notes[before:])
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print_table(rows, notes, args.threads)


if __name__ == "__main__":
    main()
