"""Text from specs, label files and caches, made inert for a Markdown pull-request comment.

`kiln plan --markdown` writes bundle names, label names, spec values, file paths and cache URIs
into a comment that GitHub renders. Any of them can come from a pull request, so none may add a
line, a heading, a link, an image, HTML, a mention or a table cell: `text` is for running text,
`code` for a name shown as code. Both put every line break and control character on one line,
and cut very long values (a label file can hold anything).
"""
from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
# what Markdown gives meaning inside a line: links and images ([ ] !), code, emphasis, tables,
# and a backslash that would escape our own escapes
_MARKS = re.compile(r"([\\`*_\[\]!|~])")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "@": "&#64;"}  # tags, autolinks, mentions
_TICKS = re.compile(r"`+")


def _one_line(value: object, limit: int) -> str:
    shown = _CONTROL.sub(" ", str(value))
    return shown if len(shown) <= limit else shown[:limit] + "..."


def text(value: object, limit: int = 300) -> str:
    """`value` as running text: shown as written, never read as Markdown or HTML."""
    shown = _MARKS.sub(r"\\\1", _one_line(value, limit))
    return "".join(_HTML.get(c, c) for c in shown)


def code(value: object, limit: int = 200, table: bool = True) -> str:
    """`value` as an inline code span (inside which nothing is Markdown or HTML): fenced with
    more backticks than it holds; `|` escaped where the span sits in a table cell."""
    shown = _one_line(value, limit)
    if table:
        shown = shown.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in _TICKS.findall(shown)), default=0) + 1)
    pad = " " if shown.startswith("`") or shown.endswith("`") else ""
    return f"{fence}{pad}{shown}{pad}{fence}"
