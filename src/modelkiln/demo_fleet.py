"""The example fleet beyond the classifiers, made by code with fixed seeds (nothing downloaded).

`memory`: a sentence-embedding encoder saved as sentence-transformers saves one (a bare BERT
encoder plus `modules.json`, `1_Pooling/config.json`, `sentence_bert_config.json`), so its spec
takes pooling, normalization and length from the checkpoint. The encoder is a tiny BERT trained
for a few seconds as a topic classifier on the same synthetic text as the classifiers; its
head is then dropped, so texts on one topic embed near each other and retrieval means something.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the heavy libraries are imported inside the functions that use them
    from transformers import PreTrainedTokenizerFast

MEMORY_TOPICS = ("bronchoscopy", "sedation", "biopsy", "followup", "imaging", "consent")


def _dump(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def write_sentence_transformers_config(out: Path, dimension: int, pooling: str, normalize: bool,
                                       max_length: int) -> None:
    """The files sentence-transformers saves beside the encoder (what validation reads)."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    _dump(out / "modules.json", modules)
    _dump(out / "1_Pooling" / "config.json",
          {"word_embedding_dimension": dimension, "pooling_mode_cls_token": pooling == "cls",
           "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
           "pooling_mode_mean_sqrt_len_tokens": False})
    _dump(out / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})


FILLER = ("patient", "procedure", "noted", "airway", "normal", "without", "with", "the", "was",
          "and", "of", "in", "after", "before", "room", "team", "history", "review", "plan")


def topic_texts(topics: tuple[str, ...], n: int, seed: int) -> list[tuple[str, int]]:
    """(text, topic index): filler words plus three made-up keywords of one topic."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = rng.randrange(len(topics))
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 6))]
        for _ in range(3):
            words.insert(rng.randrange(len(words) + 1), f"{topics[topic]}{rng.randrange(4)}")
        rows.append((" ".join(words), topic))
    return rows


def make_wordpiece(texts: list[str], out: Path, max_length: int = 256) -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer whose vocabulary is every corpus word (sorted: deterministic),
    saved as a fast tokenizer. The classifiers' demo builds the same kind (demo.py); this module
    keeps its own so that the demo's parser module and this one do not import each other."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for t in texts for w in t.lower().split()})
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=max_length)
    fast.save_pretrained(str(out))
    return fast


def make_embedding_checkpoint(out: Path, *, seed: int = 11, hidden: int = 64, layers: int = 2,
                              steps: int = 60, pooling: str = "mean", normalize: bool = True,
                              max_length: int = 128, lr: float = 2e-3) -> list[str]:
    """Write a trained tiny encoder (+ tokenizer, + sentence-transformers files) to `out`;
    returns held-out texts for calibration."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = topic_texts(MEMORY_TOPICS, 600, seed)
    tok = make_wordpiece([t for t, _ in rows], out)
    shape = {"vocab_size": len(tok), "hidden_size": hidden, "num_hidden_layers": layers,
             "num_attention_heads": max(1, hidden // 32), "intermediate_size": hidden * 4,
             "max_position_embeddings": 256}
    config = BertConfig(**shape)
    classifier = BertForSequenceClassification(BertConfig(**shape, num_labels=len(MEMORY_TOPICS)))
    opt = torch.optim.AdamW(classifier.parameters(), lr=lr)
    classifier.train()
    for step in range(steps):  # a few seconds: texts of one topic end up near each other
        batch = rows[(step * 32) % len(rows):][:32]
        enc = tok([t for t, _ in batch], padding=True, return_tensors="pt")
        loss = classifier(**enc, labels=torch.tensor([y for _, y in batch])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    classifier.bert.config = config  # the bare encoder's config: no head, no labels
    classifier.bert.save_pretrained(str(out), safe_serialization=True)
    write_sentence_transformers_config(out, hidden, pooling, normalize, max_length)
    return [t for t, _ in topic_texts(MEMORY_TOPICS, 120, seed + 1)]


VISION_LABELS = ("red", "green", "blue")


def color_images(n: int, seed: int, size: int = 32) -> list[tuple[Any, int]]:
    """(H x W x 3 uint8 array, label index): noise over one dominant colour channel, with a
    random darker square so the pictures are not flat."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        label = int(rng.integers(len(VISION_LABELS)))
        img = rng.integers(0, 110, (size, size, 3))
        img[:, :, label] += rng.integers(80, 145)
        x, y, w = (int(v) for v in rng.integers(0, size // 2, 3))
        img[y:y + w + 4, x:x + w + 4] //= 2
        out.append((np.clip(img, 0, 255).astype(np.uint8), label))
    return out


def make_vision_checkpoint(out: Path, *, seed: int = 21, hidden: int = 64, layers: int = 2,
                           size: int = 32, steps: int = 25, lr: float = 1e-3) -> list[tuple[Any, int]]:
    """Write a trained tiny ViT classifier and its image processor config to `out`; returns
    held-out (image, label) pairs for calibration."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    config = ViTConfig(image_size=size, patch_size=8, num_channels=3, hidden_size=hidden,
                       num_hidden_layers=layers, num_attention_heads=max(1, hidden // 32),
                       intermediate_size=hidden * 2, num_labels=len(VISION_LABELS),
                       id2label=dict(enumerate(VISION_LABELS)),
                       label2id={lab: i for i, lab in enumerate(VISION_LABELS)},
                       problem_type="single_label_classification")
    model = ViTForImageClassification(config)
    processor = ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3,
                                  image_std=[0.5] * 3)
    data = color_images(400, seed, size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        batch = data[(step * 32) % len(data):][:32]
        pixels = processor([img for img, _ in batch], return_tensors="pt")["pixel_values"]
        loss = model(pixel_values=pixels, labels=torch.tensor([y for _, y in batch])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(str(out))
    return color_images(90, seed + 1, size)


def write_images(directory: Path, pairs: list[tuple[Any, int]], calibration: Path) -> None:
    """PNG files under `directory` and calibration rows naming them (relative to the file)."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, label) in enumerate(pairs):
        path = directory / f"img-{i:03d}.png"
        Image.fromarray(img).save(path, optimize=False)
        rows.append({"image": str(path.relative_to(calibration.parent)),
                     "labels": [VISION_LABELS[label]]})
    calibration.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_label_files(directory: Path, labels: tuple[str, ...]) -> None:
    _dump(directory / "label_order.json", list(labels))
    _dump(directory / "registry_label_fields.json", {lab: {"field": "colour", "value": lab}
                                                     for lab in labels})


CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant:{% endif %}")


def make_word_tokenizer(texts: list[str], out: Path) -> PreTrainedTokenizerFast:
    """A word-level tokenizer for the decoder (<s> ... </s>, a chat template), saved as a fast
    tokenizer; deterministic (the vocabulary is the sorted corpus words)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>", "assistant:", "user:"]
    words = sorted({w for t in texts for w in t.lower().split()} - set(specials))
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>", chat_template=CHAT_TEMPLATE,
                                   model_input_names=["input_ids", "attention_mask"],
                                   model_max_length=256)
    fast.save_pretrained(str(out))
    return fast


def make_generation_checkpoint(out: Path, *, seed: int = 31, hidden: int = 64, layers: int = 2,
                               steps: int = 40, lr: float = 3e-3,
                               shard: str = "100KB") -> list[str]:
    """Write a trained tiny Llama-style decoder (sharded safetensors, tokenizer with a chat
    template, generation_config.json) to `out`; returns held-out prompts."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = [t for t, _ in topic_texts(MEMORY_TOPICS, 600, seed)]
    tok = make_word_tokenizer(rows, out)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):  # seconds: next words follow the synthetic topics' habits
        batch = rows[(step * 32) % len(rows):][:32]
        enc = tok(batch, padding=True, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, do_sample=False, max_new_tokens=16)
    model.save_pretrained(str(out), safe_serialization=True, max_shard_size=shard)
    prompts = [" ".join(t.split()[:3]) for t, _ in topic_texts(MEMORY_TOPICS, 40, seed + 1)]
    return prompts


NER_LABELS = ("O", "B-PROC", "I-PROC", "B-DRUG", "I-DRUG")


def tagged_texts(n: int, seed: int) -> list[tuple[str, list[str]]]:
    """(text, one BIO tag per word): filler words with a two-word procedure (bronchoscopy0..3
    twice) and a one- or two-word drug (sedation0..3) placed at random."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [(rng.choice(FILLER), "O") for _ in range(rng.randint(3, 7))]
        proc = [(f"bronchoscopy{rng.randrange(4)}", "B-PROC"),
                (f"bronchoscopy{rng.randrange(4)}", "I-PROC")]
        drug = [(f"sedation{rng.randrange(4)}", "B-DRUG")]
        if rng.random() < 0.5:
            drug.append((f"sedation{rng.randrange(4)}", "I-DRUG"))
        for phrase in (proc, drug):
            at = rng.randrange(len(words) + 1)
            words[at:at] = phrase
        rows.append((" ".join(w for w, _ in words), [tag for _, tag in words]))
    return rows


def make_ner_checkpoint(out: Path, *, seed: int = 41, hidden: int = 64, layers: int = 2,
                        steps: int = 120, lr: float = 2e-3) -> list[str]:
    """Write a trained tiny BERT tagger (BIO labels) and its tokenizer; returns held-out texts."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = tagged_texts(400, seed)
    tok = make_wordpiece([t for t, _ in rows], out)
    index = {lab: i for i, lab in enumerate(NER_LABELS)}
    model = BertForTokenClassification(BertConfig(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32), intermediate_size=hidden * 4,
        max_position_embeddings=256, num_labels=len(NER_LABELS),
        id2label=dict(enumerate(NER_LABELS)), label2id=index))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        batch = rows[(step * 32) % len(rows):][:32]
        enc = tok([t for t, _ in batch], padding=True, return_tensors="pt")
        labels = torch.full(enc["input_ids"].shape, -100)
        for i, (_, tags) in enumerate(batch):  # one token per word: the vocabulary is the words
            labels[i, 1:len(tags) + 1] = torch.tensor([index[t] for t in tags])
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    return [t for t, _ in tagged_texts(80, seed + 1)]


def write_texts(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def make_fleet_inputs(bundles: Path) -> None:
    """Inputs of bundles/memory.yaml (sentence embeddings) and bundles/vision.yaml (an image
    classifier, calibration rows naming PNG files), both ONNX int8."""
    memory = bundles / "memory"
    texts = make_embedding_checkpoint(memory / "checkpoint")
    write_texts(memory / "calibration.jsonl", texts)
    vision = bundles / "vision"
    held_out = make_vision_checkpoint(vision / "checkpoint")
    write_label_files(vision, VISION_LABELS)
    write_images(vision / "images", held_out, vision / "calibration.jsonl")
    tagger = bundles / "tagger"
    write_texts(tagger / "calibration.jsonl", make_ner_checkpoint(tagger / "checkpoint"))
    _dump(tagger / "label_order.json", list(NER_LABELS))
    _dump(tagger / "registry_label_fields.json", {lab: {"entity": lab[2:] or "none"}
                                                  for lab in NER_LABELS})
    analyst = bundles / "analyst"
    prompts = make_generation_checkpoint(analyst / "checkpoint")
    (analyst / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n"
                                                   for p in prompts[:24]))
