"""A loaded spec: plain data plus where every node came from.

Later layers (model/, graph/) check meaning, not shape, and still need to point at the line that is
wrong; they get it from `SpecDocument.problem`, so no layer past the loader ever sees YAML.
This module imports neither yaml nor jsonschema: a cached document is rebuilt from JSON alone.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkiln.errors import Problem, display_path

KeyPath = tuple[str | int, ...]
Mark = tuple[int, int]

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# Characters that end a line for a terminal, a log collector or `str.splitlines`, plus the other
# control characters: a problem that echoes one of them would read as two problems, or as none.
_BREAKS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` with every line break and control character written as an escape (`\\n`, `\\x1b`),
    so one problem is always exactly one line, whatever the file or the value held."""
    return _BREAKS.sub(lambda m: repr(m.group())[1:-1], text)


def key_text(key_path: KeyPath) -> str:
    """Dotted text for a key path: `backends.onnx.opset`, `labels.order[0]`, `values["a.b"]`.

    Keys that are not plain words are quoted so the text is never ambiguous.
    """
    out: list[str] = []
    for part in key_path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _PLAIN_KEY.match(part):
            out.append(f".{part}" if out else part)
        else:
            out.append(f"[{json.dumps(part, ensure_ascii=False)}]")
    return "".join(out)


@dataclass(frozen=True)
class SpecDocument:
    """One parsed (and, from `load_document`, schema-valid) spec file.

    `marks` maps a key path to the 1-based (line, col) of the value at that path; `key_marks` maps
    it to the position of the mapping key itself, which is where an unknown or duplicate key is
    reported.
    """

    path: Path
    data: Any
    marks: Mapping[KeyPath, Mark]
    key_marks: Mapping[KeyPath, Mark] = field(default_factory=dict)

    def where(self, key_path: KeyPath) -> Mark:
        """Mark of the value at `key_path`, or of its nearest ancestor that exists (a missing key
        is reported at the mapping that should hold it)."""
        path = tuple(key_path)
        while path:
            mark = self.marks.get(path)
            if mark is not None:
                return mark
            path = path[:-1]
        return self.marks.get((), (1, 1))

    def key_where(self, key_path: KeyPath) -> Mark:
        """Mark of the mapping key at `key_path` itself, falling back to `where`."""
        return self.key_marks.get(tuple(key_path)) or self.where(key_path)

    def problem(self, key_path: KeyPath, message: str, hint: str = "", *, at_key: bool = False) -> Problem:
        """A `Problem` pinned to `key_path` in this file (at the key itself when `at_key`)."""
        line, col = self.key_where(key_path) if at_key else self.where(key_path)
        key = key_text(tuple(key_path))
        key = key if len(key) <= 200 else f"{key[:197]}..."  # a fuzzed key can be megabytes long
        return Problem(one_line(display_path(self.path)), line, col, one_line(key),
                       one_line(message), one_line(hint))

    def get(self, key_path: KeyPath, default: Any = None) -> Any:
        """The value at `key_path`, or `default` when any step is missing."""
        node = self.data
        for part in key_path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return default
        return node
