"""JSON Schema errors -> `Problem`s a person can act on.

jsonschema's own messages name Python reprs and schema internals ("Additional properties are not
allowed ('opsett' was unexpected)"); a spec author wants the line, the key, what was expected, and
a fix. Each validator keyword gets one renderer; `oneOf`/`anyOf` collapse to the most relevant branch
so a mistake reads as one problem, not a wall. The validator is compiled once per process per
schema, and jsonschema is imported only when something has to be validated (never on a cache hit).
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from functools import cache
from typing import Any

from modelkiln.errors import Problem
from modelkiln.spec.document import KeyPath, SpecDocument
from modelkiln.spec.parse import describe
from modelkiln.spec.schemas import load_schema

Schema = dict[str, Any]  # a loaded JSON Schema (or a subschema of one)
# One renderer per validator keyword: (document, path of the value, jsonschema's error, root schema).
Renderer = Callable[[SpecDocument, KeyPath, Any, Schema], list[Problem]]

_TYPE_NAMES = {"object": "mapping", "array": "list", "integer": "integer", "number": "number",
               "string": "string", "boolean": "boolean", "null": "null"}
_YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n", "Yes", "No", "On", "Off", "YES", "NO", "ON", "OFF"}


@cache
def validator(schema: str) -> Any:
    """The compiled Draft 2020-12 validator for a named schema (the schema itself checked once)."""
    from jsonschema import Draft202012Validator

    value = load_schema(schema)
    Draft202012Validator.check_schema(value)
    return Draft202012Validator(value)


def schema_problems(doc: SpecDocument, schema: str = "bundle") -> list[Problem]:
    """Every schema violation in `doc`, each rendered as a Problem (unsorted, de-duplicated)."""
    v = validator(schema)
    out: dict[Problem, None] = {}
    for error in v.iter_errors(doc.data):
        for problem in _render(doc, error, v.schema):
            out.setdefault(problem)
    return list(out)


def _render(doc: SpecDocument, error: Any, root: Schema) -> list[Problem]:
    if error.validator in ("anyOf", "oneOf") and error.context:
        from jsonschema.exceptions import best_match

        return _render(doc, best_match(error.context), root)
    path: KeyPath = tuple(error.absolute_path)
    renderer = _RENDERERS.get(error.validator)
    if renderer is not None:
        return renderer(doc, path, error, root)
    return [doc.problem(path, error.message)]  # a keyword our schemas do not use yet


def _sentence(text: str) -> str:
    """First sentence of a description, for a hint."""
    return re.split(r"(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z{`])", text, maxsplit=1)[0].rstrip(".")


def _additional(doc: SpecDocument, path: KeyPath, error: Any, root: Schema) -> list[Problem]:
    """`additionalProperties: false`: one problem per unknown key, at the key, with a suggestion."""
    schema = error.schema
    allowed = sorted(schema.get("properties", {}))
    patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
    problems = []
    for key in error.instance:
        if key in allowed or any(p.search(key) for p in patterns):
            continue
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean '{close[0]}'?"
        elif allowed:
            hint = f"allowed keys: {', '.join(allowed)}"
        else:
            hint = "no keys are allowed here"
        problems.append(doc.problem(path + (key,), f"unknown key '{key}'", hint, at_key=True))
    return problems


def _required(doc: SpecDocument, path: KeyPath, error: Any, root: Schema) -> list[Problem]:
    condition = _then_condition(error, root)
    props = error.schema.get("properties", {})
    problems = []
    for key in error.validator_value:
        if key in error.instance:
            continue
        if condition:
            hint = f"required when {condition}"
        else:
            sub = props.get(key, {})
            if "enum" in sub:
                hint = f"add {key}: one of {', '.join(map(str, sub['enum']))}"
            elif "const" in sub:
                hint = f"add {key}: {sub['const']}"
            elif "description" in sub:  # what the key is, not a value to write after it
                hint = f"add the '{key}' key: {_sentence(sub['description'])}"
            else:
                hint = f"add {key}"
        problems.append(doc.problem(path, f"missing required key '{key}'", hint, at_key=True))
    return problems


def _then_condition(error: Any, root: Schema) -> str:
    """For an error raised from an `if`/`then`, the `if` as words: "strategy is 'f1-optimal'"."""
    node: Any = root
    for step in error.absolute_schema_path:
        if step == "then" and isinstance(node, dict) and "if" in node:
            return " and ".join(_if_words(node["if"])) or "the condition in the schema holds"
        node = node[step]
    return ""


def _if_words(node: Any, prefix: str = "") -> list[str]:
    """An `if` schema's `const`/`enum` conditions as words, nested keys dotted: "source.task is
    one of 'a', 'b'"."""
    parts: list[str] = []
    for key, sub in node.get("properties", {}).items() if isinstance(node, dict) else ():
        if not isinstance(sub, dict):
            continue
        if "const" in sub:
            parts.append(f"{prefix}{key} is {describe(sub['const'])}")
        elif "enum" in sub:
            parts.append(f"{prefix}{key} is one of {', '.join(map(describe, sub['enum']))}")
        else:
            parts += _if_words(sub, f"{prefix}{key}.")
    return parts


def _type(doc: SpecDocument, path: KeyPath, error: Any, root: Schema) -> list[Problem]:
    wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
    names = [_TYPE_NAMES.get(str(t), str(t)) for t in wanted]
    expected = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    value = error.instance
    hint = ""
    if "string" in wanted and isinstance(value, (int, float)):
        hint = "put the value in quotes to keep it as text"
    elif "boolean" in wanted and isinstance(value, str) and value in _YAML11_BOOLS:
        hint = "write true or false"
    elif {"integer", "number"} & set(wanted) and isinstance(value, str) and _looks_numeric(value):
        hint = "remove the quotes"
    elif "integer" in wanted and isinstance(value, float):
        hint = "write a whole number"
    elif "object" in wanted and value is None:
        hint = "write {} for an empty mapping"
    elif "array" in wanted and not isinstance(value, (dict, list)):
        hint = "write a list: [a, b], or one `- item` per line"
    return [doc.problem(path, f"expected {expected}, got {describe(value)}", hint)]


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _enum(doc: SpecDocument, path: KeyPath, error: Any, root: Schema) -> list[Problem]:
    options = [str(o) for o in error.validator_value]
    close = difflib.get_close_matches(str(error.instance), options, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else ""
    return [doc.problem(path, f"must be one of: {', '.join(options)}; got {describe(error.instance)}", hint)]


def _const(doc: SpecDocument, path: KeyPath, error: Any, root: Schema) -> list[Problem]:
    return [doc.problem(path, f"must be {describe(error.validator_value)}, got {describe(error.instance)}")]


def _pattern(doc: SpecDocument, path: KeyPath, error: Any, root: Schema) -> list[Problem]:
    hint = _sentence(error.schema.get("description", ""))
    return [doc.problem(path, f"{describe(error.instance)} does not match {error.validator_value}", hint)]


def _bound(words: str) -> Renderer:
    def render(doc: SpecDocument, path: KeyPath, error: Any, root: Schema) -> list[Problem]:
        return [doc.problem(path, f"must be {words} {error.validator_value}, got {describe(error.instance)}")]
    return render


def _length(doc: SpecDocument, path: KeyPath, error: Any, root: Schema) -> list[Problem]:
    limit, size = error.validator_value, len(error.instance)
    unit = {"minLength": "characters", "maxLength": "characters", "minItems": "items", "maxItems": "items",
            "minProperties": "keys", "maxProperties": "keys"}[error.validator]
    if error.validator == "minLength" and limit == 1:
        return [doc.problem(path, "must not be empty")]
    most = error.validator.startswith("max")
    unit = unit if limit != 1 else unit[:-1]
    message = f"must have at {'most' if most else 'least'} {limit} {unit}, got {size}"
    hint = ""
    if error.validator == "minProperties" and error.schema.get("properties"):
        hint = f"add one of: {', '.join(error.schema['properties'])}"
    return [doc.problem(path, message, hint)]


def _unique(doc: SpecDocument, path: KeyPath, error: Any, root: Schema) -> list[Problem]:
    seen: list[Any] = []
    for index, item in enumerate(error.instance):
        if item in seen:
            return [doc.problem(path + (index,), f"duplicate item {describe(item)}", "list each item once")]
        seen.append(item)
    return [doc.problem(path, "items must be unique")]


def _false(doc: SpecDocument, path: KeyPath, error: Any, root: Schema) -> list[Problem]:
    return [doc.problem(path, "not allowed here")]


_RENDERERS: dict[str | None, Renderer] = {
    "additionalProperties": _additional,
    "required": _required,
    "type": _type,
    "enum": _enum,
    "const": _const,
    "pattern": _pattern,
    "minimum": _bound("at least"),
    "maximum": _bound("at most"),
    "exclusiveMinimum": _bound("greater than"),
    "exclusiveMaximum": _bound("less than"),
    "minLength": _length,
    "maxLength": _length,
    "minItems": _length,
    "maxItems": _length,
    "minProperties": _length,
    "maxProperties": _length,
    "uniqueItems": _unique,
    None: _false,  # a `false` subschema
}
