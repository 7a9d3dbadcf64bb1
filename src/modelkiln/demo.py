"""Example inputs made by code: a seeded tiny BERT classifier, its tokenizer, labels, calibration data.

Nothing is downloaded. `python -m modelkiln.demo [BUNDLES_DIR]` writes the inputs the example specs
in `bundles/` point at; tests call the same functions with their own sizes and formats. The
models are trained for a few seconds on synthetic text whose words imply labels, so thresholds
and parity figures mean something, and identical seeds give identical files.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypedDict

from .artifacts import names
from .errors import ExitCode

if TYPE_CHECKING:  # the heavy libraries are imported inside the functions that use them
    from transformers import BertForSequenceClassification, PreTrainedTokenizerFast


class Row(TypedDict):
    """One calibration (or training) row, as written to the JSONL files the specs point at."""

    text: str
    labels: list[str]


REGISTRY_LABELS = ("cpt_bronchoscopy", "cpt_ebus", "cpt_biopsy", "laterality_left",
                   "laterality_right", "sedation_moderate", "sedation_general", "complication")
TRIAGE_LABELS = ("urgent", "routine", "informational")
FILLER = ("patient", "procedure", "performed", "noted", "airway", "normal", "without", "with",
          "the", "was", "and", "of", "in", "to", "after", "before", "scope", "tissue", "sample",
          "room", "team", "consent", "history", "review", "plan", "follow", "up", "clinic")


def keywords(labels: tuple[str, ...]) -> dict[str, list[str]]:
    """Three made-up words per label that imply it (plus the label's own parts)."""
    return {lab: [f"{lab.split('_')[-1]}{i}" for i in range(3)] + lab.split("_") for lab in labels}


def synthetic_rows(labels: tuple[str, ...], n: int, seed: int, multi: bool = True) -> list[Row]:
    """Rows {"text", "labels"}: filler words plus the keywords of 1-3 (or exactly 1) labels."""
    rng = random.Random(seed)
    kw = keywords(labels)
    rows: list[Row] = []
    for _ in range(n):
        chosen = sorted(rng.sample(labels, rng.randint(1, 3) if multi else 1))
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 6))]
        for lab in chosen:
            for _ in range(2):
                words.insert(rng.randrange(len(words) + 1), rng.choice(kw[lab]))
        if rng.random() < 0.1:  # a little label noise keeps the thresholds honest
            words.append(rng.choice(kw[rng.choice(labels)]))
        rows.append({"text": " ".join(words), "labels": chosen})
    return rows


def make_tokenizer(texts: list[str], out: Path) -> PreTrainedTokenizerFast:
    """Build a WordPiece tokenizer from the corpus and save it as a fast tokenizer.

    The vocabulary is derived deterministically (specials, characters, `##` continuations, then
    every corpus word, sorted): the `tokenizers` trainer breaks frequency ties in hash order, which
    would make two runs of this script differ.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for t in texts for w in t.lower().split()})
    chars = sorted({c for w in words for c in w})
    vocab_list = specials + chars + [f"##{c}" for c in chars] + [w for w in words if len(w) > 1]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab_list)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab_list.index("[CLS]"), vocab_list.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=256)
    fast.save_pretrained(str(out))
    return fast


def make_model(labels: tuple[str, ...], vocab_size: int, *, multi: bool = True, hidden: int = 64,
               layers: int = 2, seed: int = 0) -> BertForSequenceClassification:
    """A seeded BertForSequenceClassification with the given head."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32), intermediate_size=hidden * 4,
        max_position_embeddings=256, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)},
        problem_type="multi_label_classification" if multi else "single_label_classification")
    return BertForSequenceClassification(config)


def train(model: BertForSequenceClassification, tokenizer: PreTrainedTokenizerFast,
          rows: list[Row], labels: tuple[str, ...], *, multi: bool,
          steps: int = 60, seed: int = 0, lr: float = 2e-3, warmup: int = 60) -> None:
    """A few seconds of AdamW (linear warm-up: a transformer trained from scratch stalls at the
    label priors without it) so the head learns the keyword rules."""
    import torch

    torch.manual_seed(seed)
    index = {lab: i for i, lab in enumerate(labels)}
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    model.train()
    for step in range(steps):
        batch = rows[(step * 32) % len(rows):][:32]
        enc = tokenizer([r["text"] for r in batch], padding=True, return_tensors="pt")
        if multi:
            y = torch.zeros(len(batch), len(labels))
            for i, r in enumerate(batch):
                y[i, [index[lab] for lab in r["labels"]]] = 1.0
        else:
            y = torch.tensor([index[r["labels"][0]] for r in batch])
        loss = model(**enc, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()


def make_checkpoint(out: Path, labels: tuple[str, ...], *, multi: bool = True, seed: int = 0,
                    hidden: int = 64, layers: int = 2, weights: str = "safetensors",
                    steps: int = 60, rows: int = 600) -> list[Row]:
    """Write a trained tiny checkpoint (+ tokenizer) to `out`; returns held-out rows.

    weights: "safetensors" | "sharded" (two safetensors shards + index) | "bin" (pytorch_model.bin).
    """
    import torch

    torch.set_num_threads(1)  # same float summation order everywhere: same bytes from one seed
    out.mkdir(parents=True, exist_ok=True)
    data = synthetic_rows(labels, rows, seed, multi)
    tok = make_tokenizer([r["text"] for r in data], out)
    model = make_model(labels, len(tok), multi=multi, hidden=hidden, layers=layers, seed=seed)
    if steps:
        train(model, tok, data, labels, multi=multi, steps=steps, seed=seed)
    if weights == "bin":
        model.save_pretrained(str(out), safe_serialization=False)
    elif weights == "sharded":
        model.save_pretrained(str(out), safe_serialization=True, max_shard_size="100KB")
    else:
        model.save_pretrained(str(out), safe_serialization=True)
    return synthetic_rows(labels, 200, seed + 1, multi)


def write_label_files(directory: Path, labels: tuple[str, ...]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / names.LABEL_ORDER).write_text(json.dumps(list(labels), indent=2) + "\n")
    fields = {lab: {"field": lab.split("_")[0], "value": "_".join(lab.split("_")[1:]) or lab}
              for lab in labels}
    (directory / names.LABEL_FIELDS).write_text(json.dumps(fields, indent=2) + "\n")


def write_jsonl(path: Path, rows: list[Row]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def make_example_inputs(bundles: Path) -> None:
    """Inputs of bundles/registry-v3.yaml (multi-label, f1-optimal, ONNX) and bundles/triage-v1.yaml
    (single-label, fixed thresholds, pytorch_model.bin pickle, float16 cast)."""
    reg = bundles / "registry-v3"
    held_out = make_checkpoint(reg / "checkpoint", REGISTRY_LABELS, seed=3, hidden=128, steps=300)
    write_label_files(reg, REGISTRY_LABELS)
    write_jsonl(reg / "calibration.jsonl", held_out)
    tri = bundles / "triage-v1"
    make_checkpoint(tri / "checkpoint", TRIAGE_LABELS, multi=False, seed=5, weights="bin")
    write_label_files(tri, TRIAGE_LABELS)


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 64 as `kiln`'s do (argparse's own 2 is hash drift in that table)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    """`python -m modelkiln.demo [DIR]`: a real parser, so `--help` prints usage instead of
    naming a directory to write into."""
    parser = _Parser(
        prog="python -m modelkiln.demo",
        description="Write the example inputs the specs in bundles/ point at: a seeded tiny BERT "
                    "checkpoint, its tokenizer, label files and calibration rows (trained here "
                    "from a fixed seed; nothing is downloaded).")
    parser.add_argument("dir", nargs="?", default="bundles",
                        help="the bundles directory to write into (default: bundles)")
    target = Path(parser.parse_args(argv).dir)
    make_example_inputs(target)
    from .demo_fleet import make_fleet_inputs  # the other task kinds' examples (memory, ...)

    make_fleet_inputs(target)
    print(f"example inputs written under {target}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
