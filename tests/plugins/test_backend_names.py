"""Outside src/modelkiln/backends/, no module decides anything by a built-in backend's name
(issue 21 item 2): package, runtime, image and graph code ask the backend module instead.

An AST scan, exact about what it calls a decision on a name (a name is one of
`modelkiln.backends.BUILTIN`, as a string literal):
- a comparison with the name, or with a literal tuple/list/set made only of names
  (`backend == "onnx"`, `b in ("onnx", "tensorrt")`);
- a `match` case on the name;
- a lookup table: a dict literal whose keys are all names, two or more of them;
- a fallback to the name: `x or "pytorch"`, `d.get(key, "onnx")`.
A string that happens to equal a backend's name but names something else (the `onnx` and
`int8` stages' outputs, a TensorRT version field in a report) is not one of these shapes.
The scan is shown to see each shape (on snippets and on the built-in table in backends/), so
it cannot pass by seeing nothing.
"""
from __future__ import annotations

import ast
from pathlib import Path

from modelkiln.backends import BUILTIN

SRC = Path(__file__).resolve().parents[2] / "src" / "modelkiln"
BACKENDS_DIR = SRC / "backends"
NAMES = frozenset(BUILTIN)

# Task kinds' per-backend tables (stages/kinds/*: what a kind packs and reports for each backend
# it supports) are declarations of the kind, read by `package` through `kind.contents[backend]`;
# they are being reworked with the kinds (issue 22) and are the one exception left. Each entry
# must still be found: one that goes away must leave this list too.
KNOWN = {
    ("stages/kinds/embedding.py", "table"): 2,
    ("stages/kinds/generation.py", "table"): 2,
    ("stages/kinds/ner.py", "table"): 2,
    ("stages/kinds/vision.py", "table"): 2,
}


def _names_in(node: ast.AST) -> bool:
    """A literal that is a backend name, or a tuple/list/set literal of backend names only."""
    if isinstance(node, ast.Constant):
        return node.value in NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts:
        return all(isinstance(e, ast.Constant) and e.value in NAMES for e in node.elts)
    return False


def _shape(node: ast.AST) -> str | None:
    """Which decision on a backend name `node` is (None: not one)."""
    if isinstance(node, ast.Compare) and any(map(_names_in, [node.left, *node.comparators])):
        return "compare"
    if isinstance(node, ast.match_case) and isinstance(node.pattern, ast.MatchValue) \
            and _names_in(node.pattern.value):
        return "case"
    if isinstance(node, ast.Dict):
        keys = [k for k in node.keys if k is not None]
        if len(keys) >= 2 and all(isinstance(k, ast.Constant) and k.value in NAMES for k in keys):
            return "table"
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) \
            and any(map(_names_in, node.values)):
        return "fallback"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr == "get" and len(node.args) == 2 and _names_in(node.args[1]):
        return "fallback"
    return None


def decisions(source: str) -> list[tuple[int, str]]:
    """(line, shape) of every decision on a built-in backend name in `source`."""
    return sorted((getattr(n, "lineno", 0), s) for n in ast.walk(ast.parse(source))
                  if (s := _shape(n)) is not None)


def test_the_scan_sees_every_shape_and_only_those() -> None:
    assert len(NAMES) == 3
    seen = {s for _, s in decisions("""
if backend == "pytorch": pass
if b in ("onnx", "tensorrt"): pass
match backend:
    case "tensorrt": pass
LIBS = {"pytorch": "transformers", "onnx": "onnx"}
backend = plan.backend or "pytorch"
served = image.get("backend", "onnx")
""")}
    assert seen == {"compare", "case", "table", "fallback"}
    assert len(decisions('x = a or "onnx"\ny = d.get("k", "tensorrt")\n')) == 2
    # names of other things that share a backend's spelling are not decisions on a backend
    assert decisions("""
source = "int8" if precision == "int8" else "onnx"
up = ctx.up("onnx")
doc = {"onnx": str(path), "onnx_sha256": digest, "tensorrt": version}
report = {"tensorrt": engine}
keep = {k: v for k, v in items if k not in ("onnx", "timing_cache")}
plan(bundle, backend="onnx")
NAME = "onnx"
""") == []


def test_the_scan_finds_the_names_where_they_live() -> None:
    """The built-in table in backends/ is a table of the names: the scan reads real files."""
    found = {p.name: decisions(p.read_text()) for p in BACKENDS_DIR.glob("*.py")}
    assert [s for _, s in found["__init__.py"]] == ["table"], found


def test_no_module_outside_backends_decides_by_a_backend_name() -> None:
    files = [p for p in SRC.rglob("*.py") if BACKENDS_DIR not in p.parents]
    assert len(files) > 150  # the whole package is read
    counts: dict[tuple[str, str], int] = {}
    where: list[str] = []
    for path in files:
        rel = path.relative_to(SRC).as_posix()
        lines = path.read_text().splitlines()
        for line, shape in decisions(path.read_text()):
            counts[rel, shape] = counts.get((rel, shape), 0) + 1
            if (rel, shape) not in KNOWN:
                where.append(f"{rel}:{line}: {shape}: {lines[line - 1].strip()}")
    assert not where, "ask the backend module (modelkiln.backends) instead:\n" + "\n".join(where)
    assert {k: v for k, v in counts.items() if k in KNOWN} == KNOWN
