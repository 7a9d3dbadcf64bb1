"""Spec files -> plain data with a file:line:col for every node, checked against a JSON Schema.

The only layer that knows YAML and JSON Schema (an import-linter contract holds it to that). Importing it is cheap: yaml and
jsonschema are imported when a file actually has to be parsed or validated, never on a cache hit.
"""
from modelkiln.spec.cache import LOADER_VERSION
from modelkiln.spec.document import KeyPath, Mark, SpecDocument, key_text
from modelkiln.spec.loader import load_document, load_documents, spec_name
from modelkiln.spec.schemas import load_schema, schema_digest

__all__ = [
    "LOADER_VERSION", "KeyPath", "Mark", "SpecDocument", "key_text",
    "load_document", "load_documents", "load_schema", "schema_digest", "spec_name",
]
