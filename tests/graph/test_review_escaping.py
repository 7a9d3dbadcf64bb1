"""`kiln plan --markdown` (graph.review) shows hostile names as text: a label name from a pull
request cannot add a line, a heading, an image, HTML or a table cell to the comment, and a cached
record of the wrong shape is ignored with a note, not a traceback."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from modelkiln.graph.review import Side, deltas

HOSTILE = [
    "evil\n## Approved by security\n![x](https://attacker.example/pixel.png)",
    "a`![x](https://attacker.example/p.png)`b",
    "<img src=https://attacker.example/p.png>",
    "cell | injected | columns",
    "[click](https://attacker.example) @maintainer",
    "x\r\n| forged | row | here |",
]


def _rendered_safely(row: str) -> None:
    assert "\n" not in row and "\r" not in row
    assert row.startswith("| ") and row.endswith(" |")
    # outside code spans: no image or link opener, no HTML tag, no bare mention
    outside = re.sub(r"(`+)(?:(?!\1).)*?\1", "", row)
    assert "![" not in outside.replace("\\!\\[", "").replace("!\\[", "")
    assert "<" not in outside and "@m" not in outside
    assert "](" not in outside.replace("\\](", "")
    # exactly three cells: every other pipe is escaped
    assert len(re.findall(r"(?<!\\)\|", row)) == 4, row


@pytest.mark.parametrize("label", HOSTILE)
def test_hostile_label_names_and_values_stay_in_their_cell(label: str) -> None:
    rows = deltas(Side("base", None, {label: 0.5, "ok": label}),
                  Side("this", None, {label: 0.25, "ok": 0.5}))
    assert len(rows) == 2
    for row in rows:
        _rendered_safely(row)


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_file_paths_from_a_cached_manifest(path: str) -> None:
    old = {"files": [{"path": path, "size": 1, "sha256": "<b>" + "a" * 64}]}
    new = {"files": [{"path": path, "size": 2, "sha256": "b" * 64}]}
    (row,) = deltas(Side("base", old), Side("this", new))
    _rendered_safely(row)


@pytest.mark.parametrize("manifest, thresholds", [
    ({"files": [{"path": ["not", "a", "string"]}]}, None),
    ({"files": "everything"}, None),
    ({"files": [7]}, None),
    ({"archive": ["not", "an", "object"]}, None),
])
def test_malformed_cached_records_are_ignored_with_a_note(manifest: dict[str, Any],
                                                          thresholds: object) -> None:
    side = Side("cache index of abc", manifest, thresholds)  # type: ignore[arg-type]
    assert side.manifest is None and "ignored" in side.where
    assert deltas(side, Side("this", {"files": []})) == []


class _Cache:
    """An action cache whose review index holds one hostile summary for every commit."""

    uri = "file:///cache"

    def __init__(self, raw: bytes):
        self.raw = raw

    def read_small(self, key: str) -> bytes:
        return self.raw


@pytest.mark.parametrize("raw", [
    b"[1, 2]",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"manifest": {"files": "everything"}, "thresholds": [1, 2]}',
    b'{"manifest": {"files": [{"path": 7}]}}',
    b'{"manifest": {"archive": []}, "thresholds": {"a": 0.5}}',
])
def test_hostile_review_index_entries_are_ignored_with_a_note(
        raw: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from modelkiln.graph import basegit, review

    monkeypatch.setattr(basegit, "ancestors", lambda root, ref: ["a" * 40, "b" * 40])
    bundle = SimpleNamespace(name="tiny", root=Path("."))
    side = review.base_side(bundle, "pytorch", "main", None, _Cache(raw))  # type: ignore[arg-type]
    assert side.manifest is None and side.thresholds is None
    assert side.where.startswith("no base found; cache index of bbbbbbbbbb") and "ignored" in side.where
    assert deltas(side, Side("this", {"files": []}, {"a": 0.5})) == ["| threshold `a` | - | 0.5 |"]
