"""Source URIs: which strings name a remote source, and what they must pin.

`s3://bucket/prefix/` (or one object) is pinned by the lock (ETags / version ids); `oci://` must
carry a manifest digest and `hf://` a 40-hex commit, since a tag or a branch moves and the lock
must name what it resolved. `file://` and plain paths are local, as before.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import KilnError

REMOTE = ("s3", "oci", "hf")
_OCI = re.compile(r"^oci://(?P<host>[^/@]+)/(?P<repo>[a-z0-9][a-z0-9._/-]*)@(?P<digest>sha256:[0-9a-f]{64})"
                  r"(?:/(?P<sub>[\w./-]+?))?/?$")
_HF = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?)@(?P<rev>[0-9a-f]{40})"
                 r"(?:/(?P<sub>[\w./-]+?))?/?$")


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

    @property
    def single(self) -> bool:
        """An s3:// URI of one object (no trailing '/'): a file, such as calibration.jsonl."""
        return self.scheme == "s3" and not self.uri.endswith("/")


def scheme(text: str) -> str:
    """'file' for a plain path, else the lower-cased scheme before '://'."""
    return text.split("://", 1)[0].lower() if "://" in text else "file"


def is_remote(text: str | None) -> bool:
    """Any URI but file://: s3, oci and hf built in, other schemes through a plug-in's reader."""
    return text is not None and "://" in text and scheme(text) != "file"


def parse(text: str) -> SourceUri:
    """The parts of a remote source URI; `BadSourceUri` (saying what to write) when unusable."""
    kind = scheme(text)
    if kind == "s3":
        bucket, _, key = text[5:].partition("/")
        if not bucket or not key or key.startswith("/") or ".." in key.split("/"):
            raise BadSourceUri(text, "needs a bucket and a key or prefix",
                               "write s3://bucket/prefix/ (a directory) or s3://bucket/key (a file)")
        return SourceUri(text, "s3", bucket, key)
    if kind == "oci":
        m = _OCI.match(text)
        if m is None:
            raise BadSourceUri(text, "an OCI source must be pinned by its manifest digest",
                               "write oci://HOST/REPO@sha256:<64 hex>[/folder] (a tag can move; "
                               "`kiln publish` prints the digest it pushed)")
        return SourceUri(text, "oci", m["host"], m["repo"], m["digest"], m["sub"] or "")
    if kind == "hf":
        m = _HF.match(text)
        if m is None:
            raise BadSourceUri(text, "a Hugging Face source must be pinned by a full commit id",
                               "write hf://ORG/REPO@<40-hex commit>[/subfolder] (a branch can move)")
        return SourceUri(text, "hf", m["repo"], m["sub"] or "", m["rev"])
    if not re.fullmatch(r"[a-z][a-z0-9.+-]*", kind):
        raise BadSourceUri(text, f"'{kind}://' is not a URI scheme",
                           "use s3://, oci://, hf://, file:// or a path relative to the spec")
    where, _, rest = text.split("://", 1)[1].partition("/")  # a plug-in's scheme: its reader parses
    return SourceUri(text, kind, where, rest)


def short(uri: str, keep: int = 1) -> str:
    """`s3://bucket/a/run-122/` -> `s3://…/run-122`: the last `keep` parts, for one-line
    summaries."""
    head, _, rest = uri.partition("://")
    parts = [p for p in rest.split("/") if p]
    if len(parts) <= keep + 1:
        return uri.rstrip("/")
    return f"{head}://…/{'/'.join(parts[-keep:])}"
