"""How a NER tagger's per-token logits become entities: one rule for the gate and for serving.

`ner_parity` groups PyTorch's, fp32 ONNX's and int8 ONNX's tags with it under the spec's
`entities.aggregation`, and `predict` answers with it under the manifest's, so an entity served
is an entity the build gated. The strategies are those of transformers' token-classification
pipeline (`aggregation_strategy`), written here because serving must not import transformers
(tests check every strategy against the pipeline):

- simple: each token keeps its argmax tag and its softmax score;
- first: the tokens of one word take the tag and score of the word's first token;
- max: ... of the word's token with the highest score;
- average: the word's tokens' softmax rows are averaged, the word takes that row's argmax tag
  and its value.

A token continues the word before it as the pipeline decides: with a tokenizer whose model has a
continuing-subword prefix (WordPiece's "##"), when the token's text is not the text its offsets
cover (unknown tokens never continue a word); else when the character before it is not a space.
Then words become entities: a B-X word, or an X word after a word of another type, opens an X
entity, I-X words extend it, O closes it; special tokens are skipped. An entity's score is the
mean of its words' scores, its span the characters from its first word's start to its last
word's end. numpy is imported inside the functions: the runtime imports this module without it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import KilnError

AGGREGATIONS = ("simple", "first", "average", "max")


def subword_flags(text: str, tokens: Sequence[str], offsets: Sequence[tuple[int, int]],
                  ids: Sequence[int], unk_id: int | None, prefix: str | None) -> list[bool]:
    """Whether each token continues the word before it (the pipeline's `is_subword`)."""
    flags = []
    for token, (start, end), token_id in zip(tokens, offsets, ids, strict=True):
        if prefix:
            sub = len(token) != len(text[start:end])
        else:
            sub = start > 0 and " " not in text[start - 1:start + 1]
        flags.append(sub and token_id != unk_id)
    return flags


def _words(probs: Any, offsets: Sequence[tuple[int, int]], special: Sequence[int],
           subword: Sequence[bool], aggregation: str) -> list[tuple[int, float, int, int]]:
    """(label index, score, start, end) per word (per token under simple)."""
    import numpy as np

    groups: list[list[int]] = []
    for i in range(len(offsets)):
        if special[i]:
            continue
        if aggregation != "simple" and groups and subword[i]:
            groups[-1].append(i)
        else:
            groups.append([i])
    words = []
    for group in groups:
        rows = probs[group]
        if aggregation == "average":
            row = np.nanmean(rows, axis=0)
        elif aggregation == "max":
            row = rows[int(np.argmax(rows.max(axis=1)))]  # the first of equal maxima
        else:  # simple (one token) or first
            row = rows[0]
        best = int(row.argmax())
        words.append((best, float(row[best]), offsets[group[0]][0], offsets[group[-1]][1]))
    return words


def entities(text: str, labels: Sequence[str], logits: Any, offsets: Sequence[tuple[int, int]],
             special: Sequence[int], subword: Sequence[bool],
             aggregation: str) -> list[dict[str, Any]]:
    """Per-token logits of one text -> [{"entity", "start", "end", "text", "score"}]."""
    import numpy as np

    if aggregation not in AGGREGATIONS:
        raise KilnError(f"aggregation {aggregation!r}: modelkiln knows {', '.join(AGGREGATIONS)}")
    z = np.asarray(logits, dtype=np.float64)
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    found: list[dict[str, Any]] = []
    scores: list[float] = []

    def close() -> None:
        if found and scores:
            found[-1]["score"] = float(np.mean(scores))
            found[-1]["text"] = text[found[-1]["start"]:found[-1]["end"]]
        scores.clear()

    current: str | None = None
    for index, score, start, end in _words(probs, offsets, special, subword, aggregation):
        tag = labels[index]
        bi, kind = (tag[:2], tag[2:]) if tag.startswith(("B-", "I-")) else ("I-", tag)
        if kind == "O":
            close()
            current = None
        elif bi == "I-" and current == kind:
            found[-1]["end"] = end
            scores.append(score)
        else:
            close()
            found.append({"entity": kind, "start": start, "end": end})
            scores.append(score)
            current = kind
    close()
    return found
