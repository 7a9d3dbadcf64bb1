"""Spec fuzzing shared by tests/spec/test_fuzz.py (hypothesis) and bench/reliability/specs.py.

Specs come from two places: instances generated from `schema/bundle.schema.json` itself (mostly
valid shapes that point at files that do not exist), and a valid spec of a real project on disk
(config.json, label files, a safetensors header) so the cross-field checks run too. Then mutants:
deleted, duplicated and retyped keys, huge and non-finite numbers, control characters, deep
nesting, hostile paths, surrogate-pair escapes, byte flips and truncation. Everything is driven by
one `random.Random`, so a seed reproduces a case exactly.

`outcome` runs a file through `api.validate`, the code path of `kiln validate`: a case is clean
when it is accepted, or refused with a `KilnError` whose every problem is one line in the
`file:line:col: key: what` form. Anything else escapes as the exception it is.
"""
from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from modelkiln import api
from modelkiln.errors import KilnError, SpecError
from modelkiln.spec import load_schema

SCHEMA = load_schema("bundle")
PROBLEM = re.compile(r"^[^\n]+:\d+:\d+: [^\n]+: [^\n]+$")
NASTY = ["\x00", "\x1b[31m", "\n", "\r\n", "\x85", "\u2028", "\t", "\x7f", "\ufeff", "\U0001F600",
         "caf\u00e9", "'", '"', "\\", "${X}", "{backend}", "*a", "&a", "!!python/object:os.system"]
PATHS = ["/dev/zero", "/etc/passwd", "../../x", "m", "m/ckpt/config.json", "a" * 300, "a/\x00b",
         "m/" + "b/" * 2000, "~", ".", "", "m/label_order.json/..", "C:\\x", "m/ckpt/"]
HUGE, DEEP = "__HUGE_NUMBER__", "__DEEP_NEST__"

SPEC = """\
apiVersion: modelkiln/v1
kind: Bundle
name: x
version: "1.0.0"
description: fuzzed
source:
  checkpoint: m/ckpt
  task: multi-label-classification
labels:
  order: m/label_order.json
  fields: m/fields.json
thresholds:
  strategy: f1-optimal
  default: 0.5
  values: {a: 0.4}
  calibration: m/calibration.jsonl
backends:
  pytorch: {}
  onnx:
    opset: 17
    quantize: {mode: dynamic, weight_type: int8, per_channel: true}
    parity: {atol: 1.0e-4, max_decision_flip_rate: 0.01}
publish:
  s3: s3://bucket/models/{version}/{backend}/
metadata: {owner: ml}
"""


def make_project(root: Path) -> Path:
    """A project whose spec is valid: real JSON inputs and a consistent safetensors header."""
    (root / "pyproject.toml").write_text("")
    m = root / "bundles" / "m"
    (m / "ckpt").mkdir(parents=True, exist_ok=True)
    (m / "ckpt" / "config.json").write_text(json.dumps(
        {"id2label": {"0": "a", "1": "b"}, "problem_type": "multi_label_classification"}))
    head = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (m / "ckpt" / "model.safetensors").write_bytes(len(head).to_bytes(8, "little") + head + bytes(8))
    (m / "label_order.json").write_text('["a", "b"]')
    (m / "fields.json").write_text('{"a": {}, "b": {}}')
    (m / "calibration.jsonl").write_text('{"text": "t", "labels": ["a"]}\n')
    spec = root / "bundles" / "x.yaml"
    spec.write_text(SPEC)
    return spec


# --- instances of the schema ----------------------------------------------------------------------

def _string(node: dict[str, Any], rng: random.Random) -> str:
    if "pattern" in node and rng.random() < 0.7:
        return rng.choice(["x", "registry-v3", "1.0.0", "s3://b/p/{backend}/", "a-b_c", "x@sha256:" + "0" * 64])
    if rng.random() < 0.5:
        return rng.choice(PATHS + ["m/ckpt", "m/label_order.json", "m/fields.json"])
    return "".join(rng.choice("abc-_./{}") for _ in range(rng.randint(0, 12))) or "a"


def from_schema(node: Any, rng: random.Random, depth: int = 0) -> Any:
    """One instance of a schema node, honouring most keywords (a few violations are welcome)."""
    if not isinstance(node, dict):
        return None
    if "const" in node:
        return node["const"]
    if "enum" in node:
        return rng.choice(node["enum"])
    kind = node.get("type", "object" if "properties" in node else "string")
    if isinstance(kind, list):
        kind = rng.choice(kind)
    if kind == "object":
        props = node.get("properties", {})
        required = set(node.get("required", ()))
        out = {}
        for key, sub in props.items():
            if key in required or (depth < 4 and rng.random() < 0.5):
                out[key] = from_schema(sub, rng, depth + 1)
        for _pattern, sub in node.get("patternProperties", {}).items():
            if rng.random() < 0.3:
                out["k" + str(rng.randint(0, 9))] = from_schema(sub, rng, depth + 1)
        if not props and not node.get("patternProperties") and node.get("additionalProperties", True):
            out.update({f"k{i}": rng.choice([1, "v", True]) for i in range(rng.randint(0, 2))})
        return out
    if kind == "array":
        return [from_schema(node.get("items", {}), rng, depth + 1) for _ in range(rng.randint(1, 3))]
    if kind == "integer":
        return rng.randint(int(node.get("minimum", 0)), int(node.get("maximum", 4096)))
    if kind == "number":
        low, high = float(node.get("minimum", 0.0)), float(node.get("maximum", 1.0))
        return round(rng.uniform(low, high), 4) or 0.5
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string(node, rng)


# --- mutants --------------------------------------------------------------------------------------

def _containers(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, Any]]:
    """(container, key) of every node under `data`."""
    out: list[tuple[Any, Any]] = []
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in list(items):
        out.append((data, key))
        out.extend(_containers(value, path + (key,)))
    return out


def _random_value(rng: random.Random) -> Any:
    return rng.choice([None, True, 0, -1, 1.5, 1e308, float("inf"), float("nan"), "", "text",
                       rng.choice(NASTY) * rng.randint(1, 3), [], [1, "a"], {}, {"k": None},
                       HUGE, DEEP, rng.choice(PATHS)])


def _mutate_data(data: Any, rng: random.Random) -> Any:
    nodes = _containers(data)
    if not nodes:
        return _random_value(rng)
    parent, key = rng.choice(nodes)
    op = rng.randrange(6)
    if op == 0:
        del parent[key]
    elif op == 1 and isinstance(parent, dict):  # rename: an unknown key, maybe with odd characters
        parent[str(key) + rng.choice(["s", "_", rng.choice(NASTY)])] = parent.pop(key)
    elif op == 2:
        parent[key] = rng.choice(PATHS)
    else:
        parent[key] = _random_value(rng)
    return data


def serialize(data: Any, rng: random.Random) -> str:
    """YAML or JSON text of `data`, in one of the ways people and tools write them."""
    if rng.random() < 0.35:
        return json.dumps(data, ensure_ascii=rng.random() < 0.7, indent=rng.choice([None, 2]))
    return yaml.safe_dump(data, allow_unicode=rng.random() < 0.5, sort_keys=False,
                          default_flow_style=rng.choice([False, None, True]), width=rng.choice([80, 10**6]))


def _markers(text: str, rng: random.Random) -> str:
    def huge(_: Any) -> str:
        return rng.choice(["9" * rng.randint(20, 6000), "-1" + "0" * 5000, "1e999", "-1e999", "0x" + "f" * 80,
                           "1" + "0" * 400 + ".5"])

    def deep(_: Any) -> str:
        n = rng.choice([49, 50, 51, 200, 5000, 60_000])
        return "[" * n + "]" * n if rng.random() < 0.5 else "{a: " * n + "1" + "}" * n
    text = re.sub(rf"['\"]?{HUGE}['\"]?", huge, text)
    return re.sub(rf"['\"]?{DEEP}['\"]?", deep, text)


def _mutate_bytes(raw: bytes, rng: random.Random) -> bytes:
    if not raw:
        return raw
    op = rng.randrange(5)
    at = rng.randrange(len(raw))
    if op == 0:  # flip bits
        return raw[:at] + bytes([raw[at] ^ (1 << rng.randrange(8))]) + raw[at + 1:]
    if op == 1:  # duplicate a line: a duplicate key, or an extra list item
        lines = raw.split(b"\n")
        i = rng.randrange(len(lines))
        return b"\n".join(lines[:i + 1] + [lines[i]] + lines[i + 1:])
    if op == 2:
        return raw[:at]
    if op == 3:
        return raw[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 4))) + raw[at:]
    return raw[:at] + rng.choice(NASTY).encode("utf-8", "surrogatepass") + raw[at:]


def case(rng: random.Random) -> bytes:
    """One fuzzed spec file's bytes."""
    data: Any = yaml.safe_load(SPEC) if rng.random() < 0.6 else from_schema(SCHEMA, rng)
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        data = _mutate_data(data, rng)
    raw = _markers(serialize(data, rng), rng).encode("utf-8", "surrogatepass")
    for _ in range(rng.choice([0, 0, 1, 2])):
        raw = _mutate_bytes(raw, rng)
    return raw


def outcome(spec: Path, validate: Callable[[list[Path]], object] = api.validate) -> str:
    """'accepted' or 'refused' for a clean result; AssertionError for a malformed refusal; any
    other exception (the traceback a user would see) propagates."""
    try:
        validate([spec])
    except SpecError as exc:
        lines = [str(p) for p in exc.problems]
        assert lines and all(PROBLEM.match(line) for line in lines), lines
        assert str(exc).count("\n") == len(lines), str(exc)
        return "refused"
    except KilnError as exc:
        assert "\n" not in str(exc).strip(), str(exc)
        return "refused"
    return "accepted"
