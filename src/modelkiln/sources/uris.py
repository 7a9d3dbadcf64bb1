"""Source URIs: which strings name a remote source, and what they must pin.

`s3://bucket/prefix/` (or one object) is pinned by the lock (ETags / version ids); `oci://` must
carry a manifest digest and `hf://` a 40-hex commit, since a tag or a branch moves and the lock
must name what it resolved. `file://` and plain paths are local, as before. Each scheme's
source module (sources.s3, oci, hf, or a plug-in's `<scheme>+source`) parses its own URIs, so a
new source scheme is one module.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from ..errors import KilnError

REMOTE = ("s3", "oci", "hf")
PARSE = "parse_source_uri"  # a source module's own parser: (text) -> SourceUri


class BadSourceUri(KilnError):
    """A source URI of a known scheme that does not say enough (no digest, no commit)."""

    def __init__(self, uri: str, why: str, fix: str):
        self.uri, self.why, self.fix = uri, why, fix
        super().__init__(f"{uri}: {why}; {fix}")


@dataclass(frozen=True)
class SourceUri:
    """A parsed remote source. `where` is the bucket, registry host or HF repo id; `path` the
    prefix, repository or subfolder; `pin` the digest or commit the URI itself names ('' for s3)."""

    uri: str
    scheme: str  # s3 | oci | hf
    where: str
    path: str
    pin: str = ""
    sub: str = ""  # oci: a folder inside the artifact (its tokenizer/), like hf's subfolder
    single: bool = False  # one object, not a directory (s3://bucket/calibration.jsonl)


def scheme(text: str) -> str:
    """'file' for a plain path, else the lower-cased scheme before '://'."""
    return text.split("://", 1)[0].lower() if "://" in text else "file"


def is_remote(text: str | None) -> bool:
    """Any URI whose bytes are not on this machine: s3, oci and hf built in, other schemes
    through a plug-in's reader (file:// names a local path: transport.schemes)."""
    if text is None or "://" not in text:
        return False
    from .scheme import builtin_scheme

    if builtin_scheme(scheme(text)):  # s3, oci, hf: answered without loading the plug-ins
        return True
    from ..transport.schemes import is_local

    return not is_local(text)


def parse(text: str) -> SourceUri:
    """The parts of a remote source URI; `BadSourceUri` (saying what to write) when unusable.
    Each scheme's source module parses its own URIs (its `parse_source_uri`: sources.s3, oci,
    hf, or a plug-in's); a scheme whose module has none gets `where` and `path` split at the
    first '/' for its reader to read."""
    kind = scheme(text)
    if not re.fullmatch(r"[a-z][a-z0-9.+-]*", kind):
        raise BadSourceUri(text, f"'{kind}://' is not a URI scheme",
                           "use s3://, oci://, hf://, file:// or a path relative to the spec")
    own = _parser(kind)
    if own is not None:
        return own(text)
    where, _, rest = text.split("://", 1)[1].partition("/")
    return SourceUri(text, kind, where, rest)


def _parser(kind: str) -> Callable[[str], SourceUri] | None:
    """The `parse_source_uri` of the scheme's source module: a built-in one's without loading
    the plug-ins (validation stays fast), else the transport registry's `<scheme>+source`."""
    from ..transport import schemes
    from .scheme import builtin_module

    module = builtin_module(kind)
    if module is None:
        try:
            module = schemes.transport_for(kind, PARSE)
        except KilnError:
            return None
    own = getattr(module, PARSE, None)
    return cast(Callable[[str], SourceUri], own) if callable(own) else None


def short(uri: str, keep: int = 1) -> str:
    """`s3://bucket/a/run-122/` -> `s3://…/run-122`: the last `keep` parts, for one-line
    summaries."""
    head, _, rest = uri.partition("://")
    parts = [p for p in rest.split("/") if p]
    if len(parts) <= keep + 1:
        return uri.rstrip("/")
    return f"{head}://…/{'/'.join(parts[-keep:])}"
