"""`python -m modelkiln.runtime predict` on a NER tagger (entities) and a decoder LLM (greedy
text), against PyTorch: transformers' own token-classification pipeline and `generate`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from helpers import Project

pytestmark = pytest.mark.slow


def _bundle(project: Project, into: Path, fp32: bool) -> Path:
    """The built ONNX bundle, extracted; with `fp32` its int8 graph replaced by the fp32 export
    (and its external data, if any), so ONNX is exact up to rounding against PyTorch."""
    with tarfile.open(project.dist("onnx") / "bundle.tar.gz") as tar:
        tar.extractall(into, filter="data")
    if fp32:
        onnx = project.root / "build" / project.name / "onnx"
        shutil.copy(onnx / "model.onnx", into / "registry_model_int8.onnx")
        for f in onnx.glob("model.onnx?*"):  # external data: the graph names it, keep the name
            shutil.copy(f, into / f.name)
    return into


def _predict(bundle: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "modelkiln.runtime", "predict", str(bundle)],
                          input="".join(json.dumps(r) + "\n" for r in rows),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _texts(project: Project, n: int) -> list[str]:
    lines = (project.inputs / "calibration.jsonl").read_text().splitlines()[:n]
    return [json.loads(line)["text"] for line in lines]


def _pipeline_entities(project: Project, texts: list[str], strategy: str) -> list[list[Any]]:
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    build = project.root / "build" / project.name
    nlp = pipeline("token-classification",
                   model=AutoModelForTokenClassification.from_pretrained(str(build / "weights")),
                   tokenizer=AutoTokenizer.from_pretrained(str(build / "tokenizer" / "tokenizer")),
                   aggregation_strategy=strategy, device="cpu")
    return [[(e["entity_group"], int(e["start"]), int(e["end"]), float(e["score"]))
             for e in nlp(t)] for t in texts]


def _same(got: list[dict[str, Any]], want: list[list[Any]], texts: list[str]) -> None:
    for answer, ref, text in zip(got, want, texts, strict=True):
        ents = answer["entities"]
        assert [(e["entity"], e["start"], e["end"]) for e in ents] == [r[:3] for r in ref], text
        assert all(e["text"] == text[e["start"]:e["end"]] for e in ents)
        assert all(abs(e["score"] - r[3]) < 1e-4 for e, r in zip(ents, ref, strict=True))


@pytest.mark.parametrize("strategy", ["simple", "first"])
def test_predict_tags_the_entities_pytorch_tags(tagger_built: Project, tmp_path: Path,
                                                strategy: str) -> None:
    """fp32 graph: predict's entities are the HF pipeline's on the PyTorch model, with the
    aggregation the manifest records ("first" written into it to cover the other strategy)."""
    bundle = _bundle(tagger_built, tmp_path, fp32=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["signature"]["entities"]["aggregation"] == "simple"
    manifest["signature"]["entities"]["aggregation"] = strategy
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    texts = [*_texts(tagger_built, 30), "x " + _texts(tagger_built, 1)[0] + " unseenword"]
    got = _predict(bundle, [{"text": t} for t in texts])
    want = _pipeline_entities(tagger_built, texts, strategy)
    assert sum(len(w) for w in want) >= 20  # the texts carry entities of both types
    assert {r[0] for w in want for r in w} == {"PROC", "DRUG"}
    _same(got, want, texts)


def test_predict_entities_match_the_gates_grouping(tagger_built: Project, tmp_path: Path) -> None:
    """The shipped int8 bundle against PyTorch's argmax tags grouped by the gate's spans():
    exact on fp32, and on int8 at least the spec's min_agreement per label (as the gate says)."""
    import numpy as np
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from modelkiln.stages.ner_parity import agreement, spans

    build = tagger_built.root / "build" / "tagger"
    tok = AutoTokenizer.from_pretrained(str(build / "tokenizer" / "tokenizer"))
    model = AutoModelForTokenClassification.from_pretrained(str(build / "weights")).eval()
    labels = json.loads((build / "labels" / "label_order.json").read_text())
    texts = _texts(tagger_built, 40)
    ref = []
    for text in texts:
        enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        with torch.inference_mode():
            rows = model(input_ids=torch.tensor([enc["input_ids"]]),
                         attention_mask=torch.tensor([enc["attention_mask"]])).logits[0].numpy()
        ref.append(spans([labels[j] for j in np.argmax(rows, 1)], enc["offset_mapping"],
                         enc["special_tokens_mask"]))
    rows_in = [{"text": t} for t in texts]
    fp32 = _predict(_bundle(tagger_built, tmp_path / "fp32", fp32=True), rows_in)
    int8 = _predict(_bundle(tagger_built, tmp_path / "int8", fp32=False), rows_in)

    def as_spans(answers: list[dict[str, Any]]) -> list[set[tuple[int, int, str]]]:
        return [{(e["start"], e["end"], e["entity"]) for e in a["entities"]} for a in answers]

    assert as_spans(fp32) == ref
    report = agreement(ref, as_spans(int8), ["DRUG", "PROC"])
    assert min(report["per_label"].values()) >= 0.85, report


def test_predict_refuses_an_unknown_aggregation(tagger_built: Project, tmp_path: Path) -> None:
    bundle = _bundle(tagger_built, tmp_path, fp32=False)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["signature"]["entities"]["aggregation"] = "max"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    done = subprocess.run([sys.executable, "-m", "modelkiln.runtime", "predict", str(bundle)],
                          input="", capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "aggregation 'max'" in done.stderr
    assert "Traceback" not in done.stderr


def _torch_greedy(project: Project, prompts: list[str], steps: int,
                  weights: Path | None = None) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build = project.root / "build" / project.name
    tok = AutoTokenizer.from_pretrained(str(build / "tokenizer" / "tokenizer"))
    model = AutoModelForCausalLM.from_pretrained(str(weights or build / "weights"),
                                                 dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    out = []
    for prompt in prompts:
        ids = torch.tensor([tok(prompt)["input_ids"]])
        with torch.inference_mode():
            seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=steps)[0, ids.shape[1]:].tolist()
        out.append(seq[:seq.index(eos)] if eos in seq else seq)
    return out


def _prompts(project: Project, n: int) -> list[str]:
    lines = (project.inputs / "prompts.jsonl").read_text().splitlines()[:n]
    return [json.loads(line)["prompt"] for line in lines]


def test_predict_generates_what_pytorch_generates(analyst_built: Project, tmp_path: Path) -> None:
    """fp32 graph: predict's greedy tokens (KV cache through the with-past graph) are PyTorch
    generate's, for a request's max_new_tokens and for generation_config.json's default."""
    bundle = _bundle(analyst_built, tmp_path, fp32=True)
    prompts = _prompts(analyst_built, 12)
    got = _predict(bundle, [{"prompt": p, "max_new_tokens": 10} for p in prompts])
    want = _torch_greedy(analyst_built, prompts, 10)
    assert [a["tokens"] for a in got] == want
    assert sum(len(w) for w in want) >= 30  # it generated, not stopped at once
    assert all(a["finish"] == ("length" if len(a["tokens"]) == 10 else "eos") for a in got)
    default = json.loads((bundle / "generation_config.json").read_text())["max_new_tokens"]
    got = _predict(bundle, [{"prompt": p} for p in prompts[:3]])
    assert [a["tokens"] for a in got] == _torch_greedy(analyst_built, prompts[:3], default)
    assert all(isinstance(a["text"], str) for a in got)


def test_predict_decodes_through_a_kv_cache_graph(analyst_built: Project,
                                                  tmp_path: Path) -> None:
    """The shipped export (monolith) takes no past_key_values, so predict rereads the sequence
    each step; a with-past graph (optimum's default export, past inputs kept) is decoded with
    the cache fed back, to the same tokens as PyTorch. The model is the analyst's config with
    seeded random weights (initializer_range 0.3): the trained one barely looks back, so wrong
    positions or a lost cache would still give its tokens."""
    import onnxruntime as ort
    import torch
    from optimum.exporters.onnx import onnx_export_from_model
    from transformers import AutoConfig, AutoModelForCausalLM

    weights = analyst_built.root / "build" / "analyst" / "weights"
    config = AutoConfig.from_pretrained(str(weights), initializer_range=0.3)
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                             attn_implementation="eager").eval()
    model.generation_config = AutoModelForCausalLM.from_pretrained(str(weights)).generation_config
    model.save_pretrained(str(tmp_path / "random"))
    onnx_export_from_model(model, output=tmp_path / "past", task="text-generation-with-past",
                           do_validation=False, no_post_process=True)
    graph = tmp_path / "past" / "model.onnx"
    assert any(i.name.startswith("past_key_values")
               for i in ort.InferenceSession(str(graph)).get_inputs())
    bundle = _bundle(analyst_built, tmp_path / "bundle", fp32=False)
    shutil.copy(graph, bundle / "registry_model_int8.onnx")
    prompts = _prompts(analyst_built, 8)
    got = _predict(bundle, [{"prompt": p, "max_new_tokens": 10} for p in prompts])
    want = _torch_greedy(analyst_built, prompts, 10, tmp_path / "random")
    assert [a["tokens"] for a in got] == want
    assert sum(len(w) for w in want) >= 40 and len({tuple(w) for w in want}) > 1


def test_predict_int8_generation_agrees_as_the_gate_measures(analyst_built: Project,
                                                            tmp_path: Path) -> None:
    """The shipped int8 graph: share of PyTorch's greedy steps where predict picks the same
    token, up to the first difference and counting the rest as misses, at least the spec's
    min_agreement (the gate teacher-forces, so this is the stricter reading)."""
    bundle = _bundle(analyst_built, tmp_path, fp32=False)
    prompts = _prompts(analyst_built, 16)
    got = _predict(bundle, [{"prompt": p, "max_new_tokens": 6} for p in prompts])
    want = _torch_greedy(analyst_built, prompts, 6)
    same = total = 0
    for a, w in zip(got, want, strict=True):
        total += max(len(w), len(a["tokens"]))
        for x, y in zip(a["tokens"], w, strict=False):
            if x != y:
                break
            same += 1
    assert same / total >= 0.9, (same, total)


def test_predict_refuses_a_bad_max_new_tokens(analyst_built: Project, tmp_path: Path) -> None:
    bundle = _bundle(analyst_built, tmp_path, fp32=False)
    done = subprocess.run([sys.executable, "-m", "modelkiln.runtime", "predict", str(bundle)],
                          input='{"prompt": "a", "max_new_tokens": -1}\n{"prompt": "a", '
                                '"max_new_tokens": 2}\n',
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    assert "max_new_tokens" in first["error"] and len(second["tokens"]) <= 2


def test_first_aggregation_takes_each_words_first_token() -> None:
    """The tagger's vocabulary is its words (one token each), so simple and first coincide on
    it; here a word of three tokens whose later tokens disagree with the first."""
    import numpy as np

    from modelkiln.runtime.predict import entities

    labels = ("O", "B-DRUG", "I-DRUG", "B-PROC", "I-PROC")
    text = "give aspirin now"
    tags = [0, 0, 1, 4, 3, 0, 0]  # [CLS] give as ##pir ##in now [SEP]
    rows = np.full((7, 5), -4.0)
    rows[np.arange(7), tags] = 4.0
    offsets = [(0, 0), (0, 4), (5, 7), (7, 10), (10, 12), (13, 16), (0, 0)]
    special, words = [1, 0, 0, 0, 0, 0, 1], [None, 0, 1, 1, 1, 2, None]
    first = entities(text, labels, rows, offsets, special, words, "first")
    simple = entities(text, labels, rows, offsets, special, words, "simple")
    assert [(e["entity"], e["start"], e["end"], e["text"]) for e in first] == \
        [("DRUG", 5, 12, "aspirin")]
    assert [(e["entity"], e["start"], e["end"]) for e in simple] == \
        [("DRUG", 5, 7), ("PROC", 7, 10), ("PROC", 10, 12)]
    assert abs(first[0]["score"] - float(np.exp(8) / (np.exp(8) + 4))) < 1e-9


def test_predict_loads_no_torch(tagger_built: Project, analyst_built: Project,
                                tmp_path: Path) -> None:
    """Serving a tagger or a generator brings in neither torch nor transformers."""
    tagger = _bundle(tagger_built, tmp_path / "tagger", fp32=False)
    analyst = _bundle(analyst_built, tmp_path / "analyst", fp32=False)
    code = ("import sys\nfrom pathlib import Path\nfrom modelkiln.runtime import predict\n"
            f"print(predict.load(Path({str(tagger)!r})).answer('x y'))\n"
            f"print(predict.load(Path({str(analyst)!r})).answer('a b'))\n"
            "assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "entities" in done.stdout and "tokens" in done.stdout
