"""Valid specs load into plain data with exact positions; the document cache is fast and honest."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import modelkiln.spec.parse as parse_module
from modelkiln.artifacts.digest import StatCache
from modelkiln.errors import Problem, SpecError
from modelkiln.spec import SpecDocument, key_text, load_document, load_documents, load_schema
from spec.spec_helpers import BASE, Write, edit

NESTED = edit("opset: 17", "opset: 17\n    quantize: {mode: static, op_types: [MatMul, Gemm]}\n"
              "    parity:\n      atol: 1e-4\n  tensorrt:\n    profiles:\n      - ignored")


def test_valid_spec_loads_as_plain_data(write: Write) -> None:
    doc = load_document(write("b.yaml", BASE))
    assert doc.data == {
        "apiVersion": "modelkiln/v1", "kind": "Bundle", "name": "registry-v3", "version": "3.0.0",
        "source": {"checkpoint": "ckpt", "task": "multi-label-classification"},
        "labels": {"order": "labels/order.json", "fields": "labels/fields.json"},
        "thresholds": {"strategy": "fixed", "default": 0.5},
        "backends": {"onnx": {"opset": 17}},
    }
    assert list(doc.data) == ["apiVersion", "kind", "name", "version", "source", "labels", "thresholds", "backends"]
    assert doc.path == Path("b.yaml")


def test_yaml_1_2_scalars(write: Write) -> None:
    """`1e-4` is a number and `yes`/`2024-01-01` stay text: no YAML 1.1 surprises."""
    text = edit("opset: 17", "opset: 0x11\n    parity: {atol: 1e-4, samples: +3}") + \
        "metadata: {flag: yes, date: 2024-01-01, t: TRUE, n: .5, o: 0o17}\n"
    doc = load_document(write("b.yaml", text))
    assert doc.data["backends"]["onnx"] == {"opset": 17, "parity": {"atol": 0.0001, "samples": 3}}
    assert doc.data["metadata"] == {"flag": "yes", "date": "2024-01-01", "t": True, "n": 0.5, "o": 15}
    parsed = parse_module.parse_bytes(b"a: ~\nb: null\nc:\nd: '~'\ne: !!float 1\n1: x\n")
    assert parsed.data == {"a": None, "b": None, "c": None, "d": "~", "e": 1.0, "1": "x"}


def test_metadata_null_value_is_a_schema_problem(write: Write) -> None:
    with pytest.raises(SpecError) as info:
        load_document(write("b.yaml", BASE + "metadata: {owner: ~}\n"))
    assert [str(p) for p in info.value.problems] == [
        "b.yaml:17:19: metadata.owner: expected string, number or boolean, got null"]


def test_marks_of_nested_keys(write: Write) -> None:
    path = write("b.yaml", NESTED)
    with pytest.raises(SpecError):  # tensorrt.profiles is a list here; marks are still recorded
        load_document(path)
    doc = _parse(path)
    assert doc.marks[()] == (1, 1)
    assert doc.marks[("name",)] == (3, 7)
    assert doc.marks[("source",)] == (6, 3)           # a block mapping starts at its first key
    assert doc.marks[("backends", "onnx", "opset")] == (16, 12)
    assert doc.marks[("backends", "onnx", "quantize")] == (17, 15)
    assert doc.marks[("backends", "onnx", "quantize", "mode")] == (17, 22)
    assert doc.marks[("backends", "onnx", "quantize", "op_types", 1)] == (17, 49)
    assert doc.marks[("backends", "onnx", "parity", "atol")] == (19, 13)
    assert doc.marks[("backends", "tensorrt", "profiles", 0)] == (22, 9)
    assert doc.key_marks[("backends", "onnx", "parity")] == (18, 5)
    assert doc.key_marks[("backends", "onnx", "quantize", "op_types")] == (17, 30)


def test_where_and_problem(write: Write) -> None:
    doc = _parse(write("dir/b.yaml", NESTED))
    assert doc.where(("backends", "onnx", "parity", "samples")) == (19, 7)  # missing: its parent
    assert doc.where(("nowhere", "at", "all")) == (1, 1)
    assert doc.key_where(("backends", "onnx", "parity")) == (18, 5)
    problem = doc.problem(("backends", "onnx", "quantize", "op_types", 1), "unknown op", "use MatMul")
    assert problem == Problem("dir/b.yaml", 17, 49, "backends.onnx.quantize.op_types[1]", "unknown op", "use MatMul")
    assert str(problem) == "dir/b.yaml:17:49: backends.onnx.quantize.op_types[1]: unknown op (use MatMul)"
    assert str(doc.problem(("backends", "onnx"), "bad", at_key=True)) == "dir/b.yaml:15:3: backends.onnx: bad"
    assert doc.get(("backends", "onnx", "quantize", "op_types", 0)) == "MatMul"
    assert doc.get(("backends", "nope", 3), "dflt") == "dflt"


def test_key_text() -> None:
    assert key_text(()) == ""
    assert key_text(("labels", "order", 0)) == "labels.order[0]"
    assert key_text((0, "a")) == "[0].a"
    assert key_text(("thresholds", "values", "a.b c")) == 'thresholds.values["a.b c"]'


def test_json_files_load_with_marks(write: Write) -> None:
    data = load_schema("bundle")["examples"][0]
    text = json.dumps(data, indent=2)
    doc = load_document(write("b.json", text))
    assert doc.data == data
    line = text.splitlines().index('  "name": "registry-v3",') + 1
    assert doc.marks[("name",)] == (line, 11)
    tabs = write("t.json", '{\n\t"kind": "Bundle",\n\t"x": "\\u00e9\\/"\n}\n')
    with pytest.raises(SpecError) as info:
        load_document(tabs)
    assert "t.json:3:2: x: unknown key 'x'" in str(info.value)


def test_load_documents_keeps_order_and_returns_all(write: Write) -> None:
    paths = [write(f"b{i}.yaml", edit("name: registry-v3", f"name: model-{i}")) for i in (2, 0, 1)]
    assert [d.data["name"] for d in load_documents(paths)] == ["model-2", "model-0", "model-1"]


def test_load_schema() -> None:
    schema = load_schema("bundle")
    assert schema["$id"].endswith("bundle.schema.json") and schema["additionalProperties"] is False
    schema["title"] = "mutated"
    assert load_schema("bundle")["title"] != "mutated"  # a fresh copy each time
    with pytest.raises(ValueError):
        load_schema("../etc/passwd")
    with pytest.raises(FileNotFoundError):
        load_schema("no-such-schema")


def _parse(path: Path) -> SpecDocument:
    """Parse without schema validation, to look at marks of a spec the schema rejects."""
    parsed = parse_module.parse_bytes(path.read_bytes())
    assert not parsed.fatal, parsed.problems
    return SpecDocument(path, parsed.data, parsed.marks, parsed.key_marks)


# --- the document cache ---------------------------------------------------------------------

class _CountingParse:
    """Stands in for parse_bytes and counts calls, so a test can tell a hit from a miss."""

    def __init__(self) -> None:
        self.calls = 0
        self.real = parse_module.parse_bytes

    def __call__(self, raw: bytes) -> parse_module.Parsed:
        self.calls += 1
        return self.real(raw)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> _CountingParse:
    counter = _CountingParse()
    monkeypatch.setattr(parse_module, "parse_bytes", counter)
    return counter


def test_cache_hit_returns_equal_document(write: Write, workdir: Path, counting: _CountingParse) -> None:
    path = write("b.yaml", NESTED.replace("      - ignored", "      batch: {min: 1, opt: 4, max: 8}"))
    first = load_document(path, cache_dir=workdir / "cache")
    second = load_document(path, cache_dir=workdir / "cache")
    assert counting.calls == 1
    assert second == first and list(second.data) == list(first.data)
    assert dict(second.marks) == dict(first.marks) and dict(second.key_marks) == dict(first.key_marks)
    entries = list((workdir / "cache" / "specs").glob("*.json"))
    assert len(entries) == 1 and json.loads(entries[0].read_text())["data"] == first.data  # JSON, not pickle


def test_cache_misses_on_edit_and_never_hides_new_problems(write: Write, workdir: Path,
                                                           counting: _CountingParse) -> None:
    path = write("b.yaml", BASE)
    load_document(path, cache_dir=workdir / "cache")
    write("b.yaml", edit("opset: 17", "opset: 18"))
    assert load_document(path, cache_dir=workdir / "cache").data["backends"]["onnx"]["opset"] == 18
    write("b.yaml", edit("opset: 17", "opset: latest"))
    with pytest.raises(SpecError):
        load_document(path, cache_dir=workdir / "cache")
    assert counting.calls == 3


def test_cache_key_includes_schema_digest(write: Write, workdir: Path, counting: _CountingParse,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = write("b.yaml", BASE)
    load_document(path, cache_dir=workdir / "cache")
    monkeypatch.setattr("modelkiln.spec.cache.schema_digest", lambda name: "0" * 64)
    load_document(path, cache_dir=workdir / "cache")
    assert counting.calls == 2


def test_corrupt_cache_entry_is_a_miss(write: Write, workdir: Path, counting: _CountingParse) -> None:
    path = write("b.yaml", BASE)
    load_document(path, cache_dir=workdir / "cache")
    for entry in (workdir / "cache" / "specs").glob("*.json"):
        entry.write_text('{"data": 1')
    assert load_document(path, cache_dir=workdir / "cache").data["name"] == "registry-v3"
    assert counting.calls == 2


def test_cache_with_a_callers_stat_cache(write: Write, workdir: Path, counting: _CountingParse) -> None:
    stats = StatCache(workdir / "state" / "hashcache.json")
    paths = [write(f"b{i}.yaml", edit("name: registry-v3", f"name: m{i}")) for i in range(3)]
    load_documents(paths, stat_cache=stats)
    load_documents(paths, stat_cache=stats)
    assert counting.calls == 3
    assert len(list((workdir / "state" / "specs").glob("*.json"))) == 3


_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    import modelkiln.spec
    assert "yaml" not in sys.modules and "jsonschema" not in sys.modules, "imported by modelkiln.spec"
    docs = modelkiln.spec.load_documents([Path("a.yaml"), Path("b.yaml")], cache_dir={cache!r})
    print(docs[1].data["name"], "yaml" in sys.modules, "jsonschema" in sys.modules)
""")


@pytest.mark.parametrize(("cache", "expected"), [
    ("cache", "m-b False False"),  # the second run hits the cache: neither library is imported
    (None, "m-b True True"),       # control: without a cache both are, so the check can fail
])
def test_cache_hit_imports_neither_yaml_nor_jsonschema(write: Write, workdir: Path, cache: str | None,
                                                       expected: str) -> None:
    write("a.yaml", edit("name: registry-v3", "name: m-a"))
    write("b.yaml", edit("name: registry-v3", "name: m-b"))
    code = _CHILD.format(cache=cache)
    outputs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
               for _ in range(2)]
    assert outputs[0].split()[0] == "m-b"
    assert outputs[1].strip() == expected
