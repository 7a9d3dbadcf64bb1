"""Naming places: s3:// and file:// URIs (and plain paths) and what they point at."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import KilnError


def scheme_of(uri: str) -> str:
    """'s3', 'file' (also for plain paths) or whatever else the URI names."""
    if "://" not in uri:
        return "file"
    return uri.split("://", 1)[0].lower()


def local_path(uri: str) -> Path:
    """The path a file:// URI or a plain path names (made absolute)."""
    if "://" not in uri:
        return Path(uri).expanduser().absolute()
    parts = urlsplit(uri)
    if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
        raise KilnError(f"{uri}: not a local file:// URI; write file:///absolute/path")
    return Path(unquote(parts.path))


def parse_s3(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3://bucket/key URI; the key may be empty or end with '/'."""
    if not uri.startswith("s3://"):
        raise KilnError(f"{uri}: not an s3:// URI; write s3://bucket/prefix/")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise KilnError(f"{uri}: no bucket name; write s3://bucket/prefix/")
    return bucket, key


def sibling(uri: str, name: str) -> str:
    """The URI of `name` in the same "directory" as `uri` (or inside it when it ends with '/')."""
    return uri[: uri.rfind("/") + 1] + name
