"""Runtime side of modelkiln: what a serving host runs to get a verified bundle on disk.

Light on purpose (no torch, doit, transformers, yaml or jsonschema; boto3 only for s3://), so a
serving image can depend on it without the build tool's weight.
"""
from __future__ import annotations

from ..artifacts.extract import UnsafeArchive, safe_extract
from .bootstrap import Runtime, resolve_paths
from .oci_fetch import bootstrap  # S3/file://, or an OCI artifact (MODEL_BUNDLE_OCI_REF)

__all__ = ["Runtime", "UnsafeArchive", "bootstrap", "resolve_paths", "safe_extract"]
