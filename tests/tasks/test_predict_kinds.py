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


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
def test_predict_tags_the_entities_pytorch_tags(tagger_built: Project, tmp_path: Path,
                                                strategy: str) -> None:
    """fp32 graph: predict's entities are the HF pipeline's on the PyTorch model, with the
    aggregation the manifest records (each strategy written into it in turn)."""
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


SUBWORDS = {"as": "bronchoscopy0", "##pir": "sedation1", "##in": "patient", "bro": "sedation2",
            "##nch": "bronchoscopy1"}  # new word pieces -> the word whose embedding each copies


def _subword_tagger(project: Project, out: Path) -> tuple[Path, Path]:
    """The tagger with word pieces added (SUBWORDS: "aspirin" and "bronch" split into tokens
    tagged unlike each other): its tokenizer and weights under `out`, and its fp32 graph."""
    import torch
    from transformers import AutoModelForTokenClassification, PreTrainedTokenizerFast

    from modelkiln.stages.kinds.ner import _export

    build = project.root / "build" / project.name
    spec = json.loads((build / "tokenizer" / "tokenizer" / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    size = len(vocab)
    for i, piece in enumerate(SUBWORDS):
        vocab[piece] = size + i
    (out / "tok").mkdir(parents=True)
    (out / "tok" / "tokenizer.json").write_text(json.dumps(spec))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(out / "tok" / "tokenizer.json"),
                                  unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    tok.save_pretrained(str(out / "tok"))
    model = AutoModelForTokenClassification.from_pretrained(str(build / "weights")).eval()
    model.resize_token_embeddings(size + len(SUBWORDS))
    table = model.get_input_embeddings().weight
    with torch.no_grad():
        for i, like in enumerate(SUBWORDS.values()):
            table[size + i] = table[vocab[like]]
    model.save_pretrained(str(out / "weights"))
    _export(None, out / "weights", out / "onnx", None)  # type: ignore[arg-type]
    return out / "tok", out / "onnx" / "model.onnx"


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
def test_word_aggregations_match_the_pipeline_on_split_words(
        tagger_built: Project, tmp_path: Path, strategy: str) -> None:
    """Words of several tokens whose tokens disagree, on the fp32 graph: predict's entities
    under each strategy are the HF pipeline's on the PyTorch model, and the gate's grouping
    (ner_parity.spans) finds the same spans."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    from modelkiln.stages.ner_parity import spans, subwords

    tok_dir, graph = _subword_tagger(tagger_built, tmp_path / "subword")
    bundle = _bundle(tagger_built, tmp_path / "bundle", fp32=False)
    shutil.copy(graph, bundle / "registry_model_int8.onnx")
    shutil.copy(tok_dir / "tokenizer.json", bundle / "tokenizer" / "tokenizer.json")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["signature"]["entities"]["aggregation"] = strategy
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    texts = []
    for i, text in enumerate(_texts(tagger_built, 24)):
        words = text.split()
        words.insert(i % len(words), "aspirin" if i % 2 else "bronch")
        texts.append(" ".join(words) + (" aspirin bronch" if i % 3 == 0 else ""))
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert len(tok("aspirin bronch", add_special_tokens=False)["input_ids"]) == 5
    model = AutoModelForTokenClassification.from_pretrained(str(tmp_path / "subword" / "weights"))
    nlp = pipeline("token-classification", model=model, tokenizer=tok,
                   aggregation_strategy=strategy, device="cpu")
    want = [[(e["entity_group"], int(e["start"]), int(e["end"]), float(e["score"]))
             for e in nlp(t)] for t in texts]
    _same(_predict(bundle, [{"text": t} for t in texts]), want, texts)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    for text, ref in zip(texts, want, strict=True):
        enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        with torch.inference_mode():
            rows = model(input_ids=torch.tensor([enc["input_ids"]])).logits[0].numpy()
        assert spans(text, labels, rows, enc, subwords(tok, text, enc), strategy) == \
            {(r[1], r[2], r[0]) for r in ref}


def test_word_aggregations_differ_on_split_words(tagger_built: Project, tmp_path: Path) -> None:
    """The split words above do tell the strategies apart (else their test could not fail)."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    tok_dir, _ = _subword_tagger(tagger_built, tmp_path / "subword")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    model = AutoModelForTokenClassification.from_pretrained(str(tmp_path / "subword" / "weights"))
    text = "patient aspirin noted bronch with " + _texts(tagger_built, 1)[0]
    found = {s: str([(e["entity_group"], e["start"], e["end"]) for e in pipeline(
        "token-classification", model=model, tokenizer=tok, aggregation_strategy=s,
        device="cpu")(text)]) for s in ("simple", "first", "average", "max")}
    assert len(set(found.values())) >= 3, found


def test_predict_entities_match_the_gates_grouping(tagger_built: Project, tmp_path: Path) -> None:
    """The shipped int8 bundle against PyTorch's argmax tags grouped by the gate's spans():
    exact on fp32, and on int8 at least the spec's min_agreement per label (as the gate says)."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from modelkiln.stages.ner_parity import agreement, spans, subwords

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
        ref.append(spans(text, labels, rows, enc, subwords(tok, text, enc), "simple"))
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
    manifest["signature"]["entities"]["aggregation"] = "longest"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    done = subprocess.run([sys.executable, "-m", "modelkiln.runtime", "predict", str(bundle)],
                          input="", capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "aggregation 'longest'" in done.stderr
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
    """The kind's own export (with past key values, as shipped) of the analyst's config with
    seeded random weights (initializer_range 0.3): predict feeds the cache back, to the same
    tokens as PyTorch. Random weights because the trained tiny model barely looks back, so
    wrong positions or a lost cache would still give its tokens."""
    import onnxruntime as ort
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from modelkiln.stages.kinds.generation import _export

    weights = analyst_built.root / "build" / "analyst" / "weights"
    config = AutoConfig.from_pretrained(str(weights), initializer_range=0.3)
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                             attn_implementation="eager").eval()
    model.generation_config = AutoModelForCausalLM.from_pretrained(str(weights)).generation_config
    model.save_pretrained(str(tmp_path / "random"))
    _export(None, tmp_path / "random", tmp_path / "past", None)  # type: ignore[arg-type]
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


def test_predict_reads_one_token_per_step_on_the_shipped_bundle(
        analyst_built: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped int8 bundle is decoded through its cache: after the prompt, every call of
    the graph reads one new token and a past as long as the sequence before it."""
    import onnxruntime as ort

    from modelkiln.runtime import predict

    bundle = _bundle(analyst_built, tmp_path, fp32=False)
    calls: list[tuple[int, int]] = []  # (input_ids length, past length)
    run = ort.InferenceSession.run

    def spy(self: Any, names: Any, feed: dict[str, Any], *rest: Any) -> Any:
        calls.append((feed["input_ids"].shape[1], feed["past_key_values.0.key"].shape[2]))
        return run(self, names, feed, *rest)

    monkeypatch.setattr(ort.InferenceSession, "run", spy)
    prompt = _prompts(analyst_built, 1)[0]
    answer = predict.load(bundle).answer_row({"prompt": prompt, "max_new_tokens": 6})
    assert len(answer["tokens"]) >= 2, answer
    (prompt_len, first_past), *later = calls
    assert first_past == 0 and prompt_len >= 2
    assert later == [(1, prompt_len + k) for k in range(len(later))]
    assert len(later) == len(answer["tokens"]) - (answer["finish"] == "length")


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


def test_word_aggregations_on_a_word_of_three_tokens() -> None:
    """The tagger's vocabulary is its words (one token each), so the strategies coincide on
    it; here a word of three tokens whose tokens disagree: first takes the first token's tag,
    max the most confident token's, average the argmax of the averaged rows."""
    import numpy as np

    from modelkiln.artifacts.entities import entities

    labels = ("O", "B-DRUG", "I-DRUG", "B-PROC", "I-PROC")
    text = "give aspirin now"
    rows = np.full((7, 5), -4.0)  # [CLS] give as ##pir ##in now [SEP]
    for i, (tag, logit) in enumerate([(0, 4), (0, 4), (1, 2), (4, 5), (3, 3), (0, 4), (0, 4)]):
        rows[i, tag] = logit
    offsets = [(0, 0), (0, 4), (5, 7), (7, 10), (10, 12), (13, 16), (0, 0)]
    special = [1, 0, 0, 0, 0, 0, 1]
    subword = [False, False, False, True, True, False, False]

    def found(strategy: str) -> list[tuple[str, int, int, str]]:
        got = entities(text, labels, rows, offsets, special, subword, strategy)
        return [(e["entity"], e["start"], e["end"], e["text"]) for e in got]

    assert found("first") == [("DRUG", 5, 12, "aspirin")]
    assert found("max") == [("PROC", 5, 12, "aspirin")]  # ##pir's I-PROC (logit 5) is surest
    assert found("average") == [("PROC", 5, 12, "aspirin")]  # PROC rows outweigh DRUG's
    assert found("simple") == [("DRUG", 5, 7, "as"), ("PROC", 7, 10, "pir"),
                               ("PROC", 10, 12, "in")]
    first = entities(text, labels, rows, offsets, special, subword, "first")
    assert abs(first[0]["score"] - float(np.exp(6) / (np.exp(6) + 4))) < 1e-9


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
