"""Calibration rows: JSON Lines of `{"text": "...", "labels": ["a", "b"]}`, checked row by row.

Thresholds are fitted on these rows and the parity gates compare runtimes on them, so a row that is
quietly misread (`"labels": {"a": 1}` iterated as its keys, `"text": null` scored as the string
"None") changes what ships without a word. Every row must be a JSON object with a string `text`
and a `labels` list of known label names ([] for a row with none); anything else stops the build
with `file:line: what is wrong`. Pure Python (no numpy), so the checks are cheap to test.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import BadFile, open_regular, type_name

MAX_LINE = 1 << 20  # one calibration text is a document, not a corpus


@dataclass(frozen=True)
class Rows:
    """The usable rows: each text, and the indices (into the label order) of its labels."""

    texts: tuple[str, ...]
    labels: tuple[tuple[int, ...], ...]


def _decode(raw: bytes, where: str) -> Any:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadFile(f"{where}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                      "save the file as UTF-8") from None
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadFile(f"{where}:{exc.colno}: not valid JSON ({exc.msg})",
                      "write one JSON object per line") from None
    except RecursionError:
        raise BadFile(f"{where}: JSON nested too deeply to read", "write one flat JSON object per line") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise BadFile(f"{where}: not valid JSON ({str(exc)[:100]})", "fix the line") from None


def _row(value: Any, where: str, index: dict[str, int]) -> tuple[str, tuple[int, ...]]:
    example = 'e.g. {"text": "left knee MRI", "labels": ["laterality"]}'
    if not isinstance(value, dict):
        raise BadFile(f"{where}: expected a JSON object with 'text' and 'labels', got {type_name(value)}",
                      example)
    for key in ("text", "labels"):
        if key not in value:
            raise BadFile(f"{where}: missing '{key}'", example + ' ("labels": [] when none apply)')
    text, names = value["text"], value["labels"]
    if not isinstance(text, str):
        raise BadFile(f"{where}: 'text' must be a string, got {type_name(text)}", example)
    if not isinstance(names, list):
        raise BadFile(f"{where}: 'labels' must be a list of label names, got {type_name(names)}", example)
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise BadFile(f"{where}: labels[{i}] must be a label name (a string), got {type_name(name)}",
                          example)
    unknown = sorted({n for n in names if n not in index})
    if unknown:
        shown = ", ".join(repr(n[:40]) for n in unknown[:5])
        raise BadFile(f"{where}: unknown labels {shown}", f"labels are {', '.join(index)}")
    return text, tuple(sorted({index[n] for n in names}))


def json_lines(path: Path, limit: int | None = None) -> Iterator[tuple[str, Any]]:
    """`(path:line, value)` for each non-blank line of a JSON Lines file, at most `limit` of
    them; `BadFile` naming the line when the file is not a regular file, a line is over
    MAX_LINE (read no further than that), not UTF-8 or not JSON. Every calibration reader (the
    classifiers' rows here, the other kinds' texts, prompts and images) reads through it."""
    fd = open_regular(path)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            lineno = rows = 0
            while limit is None or rows < limit:
                raw = f.readline(MAX_LINE + 1)
                if not raw:
                    break
                lineno += 1
                where = f"{path}:{lineno}"
                if len(raw) > MAX_LINE:
                    raise BadFile(f"{where}: line longer than {MAX_LINE >> 20} MiB", "one short row per line")
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                if not raw.strip():
                    continue
                rows += 1
                yield where, _decode(raw, where)
    except OSError as exc:
        raise BadFile(f"{path}: cannot read it ({exc.strerror})", "check the file") from None
    finally:
        os.close(fd)


def json_texts(path: Path, keys: tuple[str, ...], example: str,
               limit: int | None = None) -> list[str]:
    """Each row's string under the first of `keys` it has (the other kinds' texts, prompts,
    image names); `BadFile` naming the line, with `example`, when a row has none."""
    out: list[str] = []
    for where, row in json_lines(path, limit):
        text = next((row[k] for k in keys if isinstance(row, dict) and k in row), None)
        if not isinstance(text, str):
            raise BadFile(f'{where}: expected a JSON object with a string "{keys[0]}"',
                          f"e.g. {example}")
        out.append(text)
    return out


def read_rows(path: Path, labels: tuple[str, ...], limit: int | None = None) -> Rows:
    """Every row of a calibration file (at most `limit`); `BadFile` names the first bad line."""
    index = {name: i for i, name in enumerate(labels)}
    texts: list[str] = []
    hits: list[tuple[int, ...]] = []
    for where, value in json_lines(path, limit):
        text, found = _row(value, where, index)
        texts.append(text)
        hits.append(found)
    if not texts:
        raise BadFile(f"{path}: no calibration rows", "add JSONL lines of text + labels")
    return Rows(tuple(texts), tuple(hits))
