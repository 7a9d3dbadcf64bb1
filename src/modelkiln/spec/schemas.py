"""Finding the JSON Schemas that ship with modelkiln, and their digests.

`modelkiln.resources` finds the bytes (packaged copy first, else the repository's `schema/`), so
the validator and the document cache always agree on which bytes they used.
"""
from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

from modelkiln.artifacts.digest import sha256_bytes
from modelkiln.resources import resource_bytes

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def schema_bytes(name: str) -> bytes:
    """Raw bytes of schema `name` ("bundle" -> bundle.schema.json), packaged copy first."""
    if not _NAME.match(name):
        raise ValueError(f"bad schema name {name!r}: expected lowercase letters, digits, - or _")
    return resource_bytes("schema", f"{name}.schema.json")


@cache
def schema_digest(name: str) -> str:
    """sha256 of the schema's bytes (and of the plug-in backends it admits, when there are any):
    part of every cached document's key."""
    extra = _plugin_backends() if name == "bundle" else {}
    tail = json.dumps(sorted(extra.items())).encode() if extra else b""
    served = _plugin_images() if name == "bundle" else ()
    tail += json.dumps(served).encode() if served else b""
    return sha256_bytes(schema_bytes(name) + tail)


def load_schema(name: str) -> dict[str, Any]:
    """The schema as a fresh dict (callers may not share and mutate one copy). The bundle schema
    admits, under `backends`, each installed plug-in backend (its SCHEMA, or any object)."""
    value = json.loads(schema_bytes(name))
    if not isinstance(value, dict):
        raise ValueError(f"schema {name} is not a JSON object")
    if name == "bundle":
        listed = value.get("properties", {}).get("backends", {}).get("properties")
        if isinstance(listed, dict):
            for backend, schema in _plugin_backends().items():
                listed.setdefault(backend, json.loads(schema))
        image = value.get("properties", {}).get("image", {}).get("properties", {}).get("backend")
        if isinstance(image, dict) and isinstance(image.get("enum"), list):
            image["enum"] += [b for b in _plugin_images() if b not in image["enum"]]
    return value


def _plugin_images() -> tuple[str, ...]:
    """Installed plug-in backends a serving image can be built for (they name IMAGE_PACKAGES)."""
    from modelkiln.backends import image_servable, plugin_names

    return image_servable(plugin_names())


def _plugin_backends() -> dict[str, str]:
    """name -> the JSON Schema (as text) of each installed plug-in backend's spec section."""
    from modelkiln.backends import backends, plugin_names

    found = backends()
    out = {}
    for name in plugin_names():
        own = getattr(found[name], "SCHEMA", None)
        schema = own if isinstance(own, dict) else {
            "description": f"{found[name].DOC} (plug-in backend)", "type": "object"}
        out[name] = json.dumps(schema, sort_keys=True)
    return out
