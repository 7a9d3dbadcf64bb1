"""The schema is the contract reviewers read: check it is complete and self-consistent."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from modelkiln.spec import load_schema

# Objects whose keys are user data (label names, metadata keys) take a schema for their values.
MAPS = {("thresholds", "values"), ("metadata",)}


def _objects(schema: dict[str, Any], path: tuple[str, ...] = ()
             ) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _objects(sub, path + (name,))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _objects(schema["additionalProperties"], path + ("*",))
    if isinstance(schema.get("items"), dict):
        yield from _objects(schema["items"], path + ("[]",))


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return load_schema("bundle")


def test_schema_is_valid_draft_2020_12(schema: dict[str, Any]) -> None:
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"] and schema["description"]


def test_examples_validate(schema: dict[str, Any]) -> None:
    assert schema["examples"]
    validator = Draft202012Validator(schema)
    for example in schema["examples"]:
        assert list(validator.iter_errors(example)) == []


def test_every_object_closes_its_keys(schema: dict[str, Any]) -> None:
    for path, sub in _objects(schema):
        if sub.get("type") != "object":
            continue
        if path in MAPS:
            assert isinstance(sub["additionalProperties"], dict), path
        else:
            assert sub.get("additionalProperties") is False, path
            assert set(sub.get("required", [])) <= set(sub["properties"]), path


def test_every_property_is_described(schema: dict[str, Any]) -> None:
    for path, sub in _objects(schema):
        if path:
            assert sub.get("description", "").strip(), path


def test_defaults_validate_against_their_own_property(schema: dict[str, Any]) -> None:
    checked = 0
    for path, sub in _objects(schema):
        if "default" in sub:
            assert list(Draft202012Validator(sub).iter_errors(sub["default"])) == [], path
            checked += 1
    assert checked >= 15
