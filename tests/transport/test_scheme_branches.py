"""A URL scheme is decided in one place (transport.schemes): no module outside transport/ (the
registry and the built-in schemes) branches on a scheme's name. Before issue 21 it was compared in
seven places (`scheme_of(uri) == "file"`, `destination.startswith("oci://")`, ...), so a new
scheme meant editing each; now such a comparison anywhere else fails this test.

What counts as a comparison with a literal scheme name: `==`, `!=`, `in`, `not in` between a
scheme (a call such as `scheme_of(...)`, a `.scheme` attribute, a name with "scheme" in it) and a string
literal (or a tuple, list or set of them) that is a scheme name; and `.startswith(...)` /
`.removeprefix(...)` / `==` with a literal `<scheme>://` prefix."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import modelkiln
from modelkiln.transport.schemes import transports

SRC = Path(modelkiln.__path__[0])
PREFIX = re.compile(r"[a-z][a-z0-9+.-]*://", re.I)
# schemes the registry knows, plus the source schemes and web ones a branch might name
NAMES = {n.split("+", 1)[0].lower() for n in transports()} | {"file", "s3", "oci", "hf",
                                                                "http", "https"}
# Where scheme names may be compared (paths below src/modelkiln): the transport package, which
# holds the registry and the built-in schemes' modules.
OWN = ("transport/",)


def _literals(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [v for e in node.elts for v in _literals(e)]
    return []


def _is_scheme(node: ast.expr) -> bool:
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else \
            func.attr if isinstance(func, ast.Attribute) else ""
        return "scheme" in name.lower()
    if isinstance(node, ast.Attribute):
        return "scheme" in node.attr.lower()
    return isinstance(node, ast.Name) and "scheme" in node.id.lower()


def _prefix(text: str) -> bool:
    """A literal `<scheme>://` of a transport or source scheme (not unix:// of a socket)."""
    return bool(PREFIX.fullmatch(text)) and text[:-3].lower() in NAMES


def _names_scheme(text: str) -> bool:
    return text.lower() in NAMES or _prefix(text)


def branches(source: str) -> list[tuple[int, str]]:
    """(line, what) for each comparison of a URI scheme with a literal scheme name."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            literal = [t for s in sides for t in _literals(s) if _names_scheme(t)]
            prefixed = [t for s in sides for t in _literals(s) if _prefix(t)]
            if (literal and any(_is_scheme(s) for s in sides)) or prefixed:
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("startswith", "removeprefix", "endswith") \
                and any(_prefix(t) for a in node.args for t in _literals(a)):
            found.append((node.lineno, ast.unparse(node)))
    return found


def _allowed(rel: str) -> bool:
    return rel.startswith(OWN)


def test_no_module_outside_the_transports_branches_on_a_scheme_name() -> None:
    offenders = [f"{rel}:{line}: {what}"
                 for path in sorted(SRC.rglob("*.py"))
                 if not _allowed(rel := path.relative_to(SRC).as_posix())
                 for line, what in branches(path.read_text())]
    assert offenders == [], "ask transport.schemes (or the scheme's own module) instead:\n" + \
        "\n".join(offenders)


def test_the_scan_finds_each_spelling_of_a_scheme_branch() -> None:
    snippet = '''
if scheme_of(uri) == "file": pass
if scheme_of(uri) not in ("s3", "file"): pass
if parts.scheme != "https": pass
if uri_scheme in {"hf"}: pass
if remote.destination.startswith("oci://"): pass
if uri[:5] == "s3://": pass
if scheme(text) != "file": pass
if kind == "file": pass
if name.startswith("file_"): pass
if host.startswith("unix://"): pass
if scheme_of(uri) == other: pass
'''
    assert [line for line, _ in branches(snippet)] == [2, 3, 4, 5, 6, 7, 8]


def test_the_transports_do_compare_scheme_names_so_the_scan_is_not_vacuous() -> None:
    inside = {path.name for path in (SRC / "transport").rglob("*.py")
              if branches(path.read_text())}
    assert {"schemes.py", "uris.py"} <= inside
