"""`python3 -m modelkiln.runtime predict [BUNDLE_DIR]`: JSON lines in, one answer per line out.

The one inference path of a served bundle: the serving image's `predict` command runs it, and so
can a host that bootstrapped the bundle (BUNDLE_DIR defaults to $REGISTRY_BUNDLE_DIR, which both
set). It reads what the bundle's manifest.json records under `signature` (task, input field,
maximum sequence length) and answers each input line with

    {"labels": [labels that are on, in label order], "scores": {label: score}}

(other task kinds: an embedding bundle `{"embedding": [...]}`; a NER tagger `{"entities":
[{"entity", "start", "end", "text", "score"}]}` grouped by the manifest's aggregation; a decoder
LLM reads `{"prompt": ..., "max_new_tokens": N}` and answers `{"text", "tokens", "finish"}` by
greedy decoding; an image classifier reads `{"image": PATH}`)

Scores and decisions come from artifacts/decisions.py, the rule the thresholds stage and the
parity gates use, so an answer here is the answer the build gated. Texts run one at a time, as
the int8 parity gate runs them (dynamic quantization scales activations per input, so batching
would make a row's answer depend on its neighbours). A line that is not a JSON object with the
input field answers `{"error": "line N: ..."}` in its place (outputs stay aligned with inputs)
and the same one line goes to stderr; the exit status is 1 when any line was refused.

Only this module of the runtime imports numpy, onnxruntime and tokenizers (or torch and
transformers for a PyTorch bundle), inside `load`; `runtime/__main__` imports it only for
`predict`, so the bootstrap stays light (an import-linter contract checks both).
"""
from __future__ import annotations

import json
import os
import select
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..artifacts import names
from ..artifacts.decisions import cut_vector, decide, scores
from ..artifacts.entities import AGGREGATIONS, entities, subword_flags
from ..backends import backends
from ..errors import KilnError

MAX_LINE = 1 << 20  # a longer input line is refused, not read into a tokenizer
THREADS_ENV = "REGISTRY_PREDICT_THREADS"


@dataclass(frozen=True)
class Predictor:
    """A loaded bundle: `logits(text)` gives one row of logits; the rest says how to decide."""

    task: str
    input_field: str
    labels: tuple[str, ...]
    cuts: dict[str, float]
    logits: Callable[..., Any]  # str -> logits row (a Generator: prompt, steps -> tokens)
    vector: Any = field(default=None, compare=False)  # cut_vector(...), made once per load

    def answer_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Answer one request object (its input field already checked to be a string)."""
        return self.answer(str(row[self.input_field]))

    def answer(self, text: str) -> dict[str, Any]:
        import numpy as np

        probs = scores(np.asarray(self.logits(text), dtype=np.float64).reshape(1, -1), self.task)
        on = decide(probs, self.labels, self.cuts, task=self.task, vector=self.vector)[0]
        return {"labels": [lab for lab, hit in zip(self.labels, on, strict=True) if hit],
                "scores": {lab: float(p) for lab, p in zip(self.labels, probs[0], strict=True)}}


@dataclass(frozen=True)
class Embedder(Predictor):
    """A sentence-embedding bundle (task feature-extraction): the graph pools and normalizes,
    so the answer is its output row as it is: {"embedding": [floats]}."""

    def answer(self, text: str) -> dict[str, Any]:
        return {"embedding": [float(x) for x in self.logits(text)]}


@dataclass(frozen=True)
class Tagger(Predictor):
    """A NER tagger (task token-classification): `logits(text)` gives the per-token logits,
    the tokenizers Encoding (offsets, special tokens) and which tokens continue a word; the
    answer is the entities grouped by the manifest's aggregation strategy, the gate's rule
    (artifacts/entities.py): {"entities": [{"entity", "start", "end", "text", "score"}]}."""

    aggregation: str = "simple"

    def answer(self, text: str) -> dict[str, Any]:
        rows, enc, subword = self.logits(text)
        return {"entities": entities(text, self.labels, rows, enc.offsets,
                                     enc.special_tokens_mask, subword, self.aggregation)}


@dataclass(frozen=True)
class Generator(Predictor):
    """A decoder LLM (task text-generation): {"prompt": str, "max_new_tokens": int (optional)}
    answers {"text": the continuation, "tokens": [ids], "finish": "eos" | "length"}; `logits`
    is the decoding function (prompt, max_new_tokens) -> (tokens, finish, text)."""

    max_new_tokens: int = 20

    def answer_row(self, row: dict[str, Any]) -> dict[str, Any]:
        steps = row.get("max_new_tokens", self.max_new_tokens)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError('"max_new_tokens" must be a whole number, 0 or more')
        tokens, finish, text = self.logits(str(row[self.input_field]), steps)
        return {"text": text, "tokens": tokens, "finish": finish}

    def answer(self, text: str) -> dict[str, Any]:
        return self.answer_row({self.input_field: text})


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except OSError as exc:
        raise KilnError(f"{path}: cannot read it ({exc.strerror}); is this a bundle directory?") \
            from None
    except ValueError:
        raise KilnError(f"{path}: not valid JSON; the bundle is damaged, fetch it again") from None


def signature(bundle_dir: Path) -> dict[str, Any]:
    """The bundle's input/output signature from its manifest.json."""
    manifest = _json_file(bundle_dir / names.MANIFEST)
    sig = manifest.get("signature") if isinstance(manifest, dict) else None
    if not isinstance(sig, dict):
        raise KilnError(f"{bundle_dir / names.MANIFEST}: records no serving signature; rebuild "
                        "the bundle with this modelkiln")
    return {**sig, "backend": manifest.get("backend")}


def load(bundle_dir: Path) -> Predictor:
    """Load the bundle for answering; a missing runtime library is one line naming it."""
    sig = signature(bundle_dir)
    embedding = sig.get("embedding")
    if isinstance(embedding, dict):
        return _embedder(bundle_dir, sig, embedding)
    if sig.get("task") == "token-classification":
        return _tagger(bundle_dir, sig)
    if sig.get("task") == "text-generation":
        return _generator(bundle_dir, sig)
    labels = _json_file(bundle_dir / names.LABEL_ORDER)
    cuts = _json_file(bundle_dir / names.THRESHOLDS)
    if not isinstance(labels, list) or not isinstance(cuts, dict):
        raise KilnError(f"{bundle_dir}: label_order.json or thresholds.json has the wrong shape")
    backend = sig.get("backend")
    max_length = int(sig.get("max_length") or 512)
    try:
        if sig.get("input") == "image":  # an image classifier: {"image": "<path on this host>"}
            logits = _image_onnx(bundle_dir)
        elif _serves_checkpoint(str(backend)):
            logits = _torch(bundle_dir, max_length)
        elif (bundle_dir / names.ONNX_INT8).is_file():
            logits = _onnx(bundle_dir, max_length)
        else:
            raise KilnError(f"{bundle_dir}: a {backend} bundle has no model predict can run "
                            f"(expected {names.ONNX_INT8} or the PyTorch weights)")
    except ImportError as exc:
        raise KilnError(f"predict needs the {backend} serving libraries, and {exc.name} is not "
                        "installed; the serving image carries them (image lock), or pip install "
                        "them beside modelkiln") from None
    import numpy as np

    order = tuple(str(x) for x in labels)
    floats = {str(k): float(v) for k, v in cuts.items()}
    try:
        vector = cut_vector(order, floats, np.float64)
    except KilnError as exc:
        raise KilnError(f"{bundle_dir}: {exc}") from None
    return Predictor(str(sig.get("task")), str(sig.get("input", "text")), order, floats,
                     logits, vector)


def _serves_checkpoint(backend: str) -> bool:
    """Whether the backend's model is its transformers checkpoint (MODEL_DIR: run with torch),
    not the bundle's int8 ONNX model."""
    about = backends().get(backend)
    return about is not None and about.MODEL_DIR


def _embedder(bundle_dir: Path, sig: dict[str, Any], embedding: dict[str, Any]) -> Predictor:
    """Load an embedding bundle's int8 graph (an embedding bundle ships ONNX only)."""
    if not (bundle_dir / names.ONNX_INT8).is_file():
        raise KilnError(f"{bundle_dir}: an embedding bundle without {names.ONNX_INT8}; predict "
                        "serves embeddings from the ONNX bundle")
    try:
        vector = _onnx(bundle_dir, int(sig.get("max_length") or 512),
                       str(embedding.get("output", "sentence_embedding")))
    except ImportError as exc:
        raise KilnError(f"predict needs onnxruntime and tokenizers, and {exc.name} is not "
                        "installed; pip install them beside modelkiln") from None
    return Embedder(str(sig.get("task")), str(sig.get("input", "text")), (), {}, vector)


def _session(model: Path) -> Any:
    """An onnxruntime CPU session with $REGISTRY_PREDICT_THREADS intra-op threads (default 1)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def _tagger(bundle_dir: Path, sig: dict[str, Any]) -> Predictor:
    """A NER bundle: its int8 graph, label order (BIO) and the manifest's aggregation."""
    labels = sig.get("labels")
    if not isinstance(labels, list) or not labels:
        labels = _json_file(bundle_dir / names.LABEL_ORDER)
    aggregation = str((sig.get("entities") or {}).get("aggregation", "simple"))
    if aggregation not in AGGREGATIONS:
        raise KilnError(f"{bundle_dir / names.MANIFEST}: signature.entities.aggregation "
                        f"{aggregation!r}; predict knows {', '.join(AGGREGATIONS)}")
    if not (bundle_dir / names.ONNX_INT8).is_file():
        raise KilnError(f"{bundle_dir}: a NER bundle without {names.ONNX_INT8}; predict tags "
                        "entities from the ONNX bundle")
    try:
        import numpy as np
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(bundle_dir / names.TOKENIZER_DIR / "tokenizer.json"))
        session = _session(bundle_dir / names.ONNX_INT8)
    except ImportError as exc:
        raise KilnError(f"predict needs onnxruntime and tokenizers, and {exc.name} is not "
                        "installed; pip install them beside modelkiln") from None
    tok.enable_truncation(int(sig.get("max_length") or 512))
    tok.no_padding()
    wanted = [i.name for i in session.get_inputs()]
    prefix = getattr(tok.model, "continuing_subword_prefix", None)
    unk = getattr(tok.model, "unk_token", None)
    unk_id = tok.token_to_id(unk) if isinstance(unk, str) else None

    def tag(text: str) -> Any:
        enc = tok.encode(text)
        given = {"input_ids": enc.ids, "attention_mask": enc.attention_mask,
                 "token_type_ids": enc.type_ids}
        feed = {n: np.asarray([given[n]], dtype=np.int64) for n in wanted}
        subword = subword_flags(text, enc.tokens, enc.offsets, enc.ids, unk_id, prefix)
        return session.run(["logits"], feed)[0][0], enc, subword

    return Tagger(str(sig.get("task")), str(sig.get("input", "text")),
                  tuple(str(x) for x in labels), {}, tag, aggregation=aggregation)


def _generator(bundle_dir: Path, sig: dict[str, Any]) -> Predictor:
    """A decoder LLM bundle: greedy decoding with its ONNX graph (the int8 one it ships).

    The graph is optimum's `text-generation-with-past` export: the first step reads the prompt
    with an empty past, and every later step feeds only the new token and the previous step's
    present key/values back as the past; the generation kind ships such a graph (its gate
    decodes the same way). A graph without past_key_values inputs (a bundle built before, from
    optimum's monolith export) is run on the full sequence at every step instead (same tokens,
    quadratic work). Decoding stops at
    generation_config.json's eos_token_id(s) or after max_new_tokens (a request field; its
    default is generation_config.json's max_new_tokens, else 20). The prompt is encoded as is,
    with the tokenizer's special tokens (no chat template: a chat client applies
    chat_template.jinja before sending). Hand-written because optimum's ORTModelForCausalLM
    would bring torch and transformers into the serving side."""
    model = bundle_dir / names.ONNX_INT8
    if not model.is_file():
        raise KilnError(f"{bundle_dir}: a text-generation bundle without {names.ONNX_INT8}; "
                        "predict generates from the ONNX bundle")
    gen_path = bundle_dir / "generation_config.json"
    gen = _json_file(gen_path) if gen_path.is_file() else {}
    config = _json_file(bundle_dir / names.CONFIG)
    eos_raw = gen.get("eos_token_id", config.get("eos_token_id"))
    eos = {int(x) for x in (eos_raw if isinstance(eos_raw, list) else [eos_raw])
           if x is not None}
    default_steps = int(gen.get("max_new_tokens") or 20)
    try:
        import numpy as np
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(bundle_dir / names.TOKENIZER_DIR / "tokenizer.json"))
        session = _session(model)
    except ImportError as exc:
        raise KilnError(f"predict needs onnxruntime and tokenizers, and {exc.name} is not "
                        "installed; pip install them beside modelkiln") from None
    tok.enable_truncation(int(sig.get("max_length") or 512))
    tok.no_padding()
    heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
    head_dim = int(config.get("head_dim")
                   or config["hidden_size"] // config["num_attention_heads"])
    inputs = [i.name for i in session.get_inputs()]
    past = [n for n in inputs if n.startswith("past_key_values")]
    outputs = [o.name for o in session.get_outputs()]
    unknown = [n for n in inputs if n not in ("input_ids", "attention_mask", "position_ids")
               and n not in past]
    if unknown or "logits" not in outputs:
        raise KilnError(f"{model}: a generation graph with inputs {inputs} and outputs "
                        f"{outputs[:3]}...; predict expects input_ids, attention_mask, "
                        "position_ids, past_key_values.* and logits")
    present = {n: n.replace("past_key_values", "present", 1) for n in past}

    def step(ids: list[int], start: int, cache: dict[str, Any]) -> Any:
        """Logits of the last position, reading `ids` from position `start` on."""
        total = start + len(ids)
        feed: dict[str, Any] = {}
        for n in inputs:
            if n == "input_ids":
                feed[n] = np.asarray([ids], dtype=np.int64)
            elif n == "attention_mask":
                feed[n] = np.ones((1, total), dtype=np.int64)
            elif n == "position_ids":
                feed[n] = np.arange(start, total, dtype=np.int64)[None]
            else:
                feed[n] = cache.get(n, np.zeros((1, heads, 0, head_dim), dtype=np.float32))
        got = dict(zip(outputs, session.run(outputs, feed), strict=True))
        for n in past:
            cache[n] = got[present[n]]
        return got["logits"][0, -1]

    def generate(prompt: str, steps: int) -> tuple[list[int], str, str]:
        seq = list(tok.encode(prompt).ids)
        cache: dict[str, Any] = {}
        new: list[int] = []
        finish = "length"
        while len(new) < steps:
            if past and new:
                logits = step(seq[-1:], len(seq) - 1, cache)
            else:
                logits = step(seq, 0, cache)
            token = int(np.asarray(logits).argmax())
            if token in eos:
                finish = "eos"
                break
            new.append(token)
            seq.append(token)
        return new, finish, tok.decode(new, skip_special_tokens=True)

    return Generator(str(sig.get("task")), str(sig.get("input", "prompt")), (), {}, generate,
                     max_new_tokens=default_steps)


def _onnx(bundle_dir: Path, max_length: int, output: str = "logits") -> Callable[[str], Any]:
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle_dir / names.TOKENIZER_DIR / "tokenizer.json"))
    tok.enable_truncation(max_length)
    tok.no_padding()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # One text at a time is a few milliseconds of work: more intra-op threads only spin between
    # rows and compete with whatever carries the answers out (measured in bench_serving: 2.2x
    # faster in-process with one). A large model can ask for more.
    options.intra_op_num_threads = threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(bundle_dir / names.ONNX_INT8), options,
                                   providers=["CPUExecutionProvider"])
    wanted = [i.name for i in session.get_inputs()]

    def logits(text: str) -> Any:
        enc = tok.encode(text)
        given = {"input_ids": enc.ids, "attention_mask": enc.attention_mask,
                 "token_type_ids": enc.type_ids}
        feed = {n: np.asarray([given[n]], dtype=np.int64) for n in wanted}
        return session.run([output], feed)[0][0]

    return logits


def _image_onnx(bundle_dir: Path) -> Callable[[str], Any]:
    """An image classifier's int8 graph behind its preprocessor_config.json: resize (bilinear),
    rescale and normalize as transformers' ViT-style processors do, channels first. Written here
    (PIL + numpy) so the serving side needs no transformers."""
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    if not (bundle_dir / names.ONNX_INT8).is_file():
        raise KilnError(f"{bundle_dir}: predict serves image classifiers from the ONNX bundle "
                        f"({names.ONNX_INT8})")
    cfg = _json_file(bundle_dir / "preprocessor_config.json")
    size = cfg.get("size") or {}
    shape = (int(size.get("width", 224)), int(size.get("height", 224)))
    mean = np.asarray(cfg.get("image_mean", [0.5] * 3), dtype=np.float32)[:, None, None]
    std = np.asarray(cfg.get("image_std", [0.5] * 3), dtype=np.float32)[:, None, None]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads()
    session = ort.InferenceSession(str(bundle_dir / names.ONNX_INT8), options,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def logits(path: str) -> Any:
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except OSError as exc:
            raise ValueError(f"cannot read image {path!r}: {exc}") from None
        if cfg.get("do_resize", True) and rgb.size != shape:
            rgb = rgb.resize(shape, Image.Resampling.BILINEAR)
        x = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1)
        if cfg.get("do_rescale", True):
            x = x * float(cfg.get("rescale_factor", 1 / 255))
        if cfg.get("do_normalize", True):
            x = (x - mean) / std
        return session.run(["logits"], {name: x[None].astype(np.float32)})[0][0]

    return logits


def threads() -> int:
    """Intra-op threads for the model: $REGISTRY_PREDICT_THREADS, default 1."""
    raw = os.environ.get(THREADS_ENV, "1")
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise KilnError(f"{THREADS_ENV}={raw!r}: expected a whole number of threads, 1 or more")
    return value


def _torch(bundle_dir: Path, max_length: int) -> Callable[[str], Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bundle_dir / names.TOKENIZER_DIR), use_fast=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(bundle_dir),
                                                               dtype=torch.float32)
    model.eval()

    def logits(text: str) -> Any:
        batch = tok([text], truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            return model(**batch).logits.float().numpy()[0]

    return logits


def _row(line: str, field: str) -> dict[str, Any]:
    _text(line, field)
    return dict(json.loads(line))


def _text(line: str, field: str) -> str:
    if len(line) > MAX_LINE:
        raise ValueError(f"longer than {MAX_LINE} characters")
    try:
        row = json.loads(line)
    except ValueError:
        raise ValueError(f'not JSON; write one object per line, e.g. {{"{field}": "..."}}') \
            from None
    if not isinstance(row, dict) or not isinstance(row.get(field), str):
        raise ValueError(f'expected a JSON object with a string "{field}"')
    return str(row[field])


def answer_lines(predictor: Predictor, lines: Iterable[tuple[str, bool]], out: TextIO,
                 err: TextIO) -> int:
    """Answer every non-blank line; returns how many lines were refused. `lines` gives each
    line with whether more input is already waiting: answers are flushed when none is, so a
    caller sending one line gets its answer at once and a stream of lines is not slowed by a
    write per answer."""
    refused = 0
    for number, (line, waiting) in enumerate(lines, 1):
        if line.strip():
            try:
                reply: dict[str, Any] = predictor.answer_row(_row(line, predictor.input_field))
            except ValueError as exc:
                refused += 1
                reply = {"error": f"line {number}: {exc}"}
                err.write(f"kiln: predict: line {number}: {exc}\n")
                err.flush()
            out.write(json.dumps(reply, sort_keys=True) + "\n")
        if not waiting:
            out.flush()
    out.flush()
    return refused


def input_lines(fd: int) -> Iterator[tuple[str, bool]]:
    """The lines of `fd` (read unbuffered, in chunks), each with whether more input is waiting:
    another complete line already read, or bytes ready on `fd`."""
    pending = b""
    while chunk := os.read(fd, 1 << 16):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for i, raw in enumerate(complete):
            more = i + 1 < len(complete) or bool(select.select([fd], [], [], 0)[0])
            yield raw.decode("utf-8", "replace"), more
    if pending:
        yield pending.decode("utf-8", "replace"), False


def main(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        sys.stderr.write("usage: python3 -m modelkiln.runtime predict [BUNDLE_DIR] < rows.jsonl\n"
                         "  BUNDLE_DIR defaults to $REGISTRY_BUNDLE_DIR\n")
        return 64
    where = argv[0] if argv else os.environ.get("REGISTRY_BUNDLE_DIR")
    if not where:
        sys.stderr.write("kiln: predict: name the bundle directory or set REGISTRY_BUNDLE_DIR\n")
        return 64
    try:
        predictor = load(Path(where))
    except KilnError as exc:
        sys.stderr.write(f"kiln: {exc}\n")
        return int(exc.exit_code)
    refused = answer_lines(predictor, input_lines(sys.stdin.fileno()), sys.stdout, sys.stderr)
    return 1 if refused else 0
