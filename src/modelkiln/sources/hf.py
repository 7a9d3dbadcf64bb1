"""hf://ORG/REPO@COMMIT[/subfolder] sources, through huggingface_hub itself.

huggingface_hub finds the snapshot (its cache under HF_HOME / HF_HUB_CACHE, downloading from
HF_ENDPOINT unless HF_HUB_OFFLINE=1), so its settings, auth token and cache layout apply unchanged;
we never talk to the hub ourselves. Locking hashes each file of the snapshot once (the hub's own
identity of a file is an LFS sha256 for large files but a git blob id for small ones, so it is kept
only as `ref`) and keeps the bytes in the fetch cache; a build fetches through the same calls.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

from ..errors import KilnError
from .lockfile import LockedFile, LockEntry
from .scheme import Ingest, Write
from .uris import BadSourceUri, SourceUri

_URI = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?)@(?P<rev>[0-9a-f]{40})"
                  r"(?:/(?P<sub>[\w./-]+?))?/?$")

CHUNK = 1 << 20


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise KilnError("hf:// sources need huggingface_hub; install it with "
                        "`pip install modelkiln[hf]`") from None
    return huggingface_hub


def _fail(src: SourceUri, exc: Exception) -> KilnError:
    return KilnError(f"{src.uri}: huggingface_hub cannot provide revision {src.pin} "
                     f"({type(exc).__name__}: {str(exc)[:200]}); with HF_HUB_OFFLINE=1 the "
                     "snapshot must already be in the cache (HF_HOME), otherwise check HF_ENDPOINT "
                     "and the token")


class HfReader:
    def resolve(self, src: SourceUri, ingest: Ingest) -> LockEntry:
        hub = _hub()
        try:
            snap = Path(hub.snapshot_download(src.where, revision=src.pin,
                                              allow_patterns=[f"{src.path}/*"] if src.path else None))
        except Exception as exc:  # the hub's own errors are many; each is one line here
            raise _fail(src, exc) from None
        base = snap / src.path if src.path else snap
        files = []
        for dirpath, _dirs, names in os.walk(base):
            for name in sorted(names):
                p = Path(dirpath, name)
                rel = p.relative_to(base).as_posix()
                ref = os.path.basename(os.readlink(p)) if p.is_symlink() else ""
                files.append(ingest(rel, p.stat().st_size, ref, functools.partial(_read, p)))
        if not files:
            raise KilnError(f"{src.uri}: the snapshot has no files there; check the subfolder")
        return LockEntry(src.uri, src.pin, tuple(sorted(files, key=lambda f: f.path)))

    def stream(self, src: SourceUri, f: LockedFile, offset: int, write: Write) -> None:
        name = f"{src.path}/{f.path}" if src.path else f.path
        try:
            path = _hub().hf_hub_download(src.where, name, revision=src.pin)
        except Exception as exc:
            raise _fail(src, exc) from None
        _read(Path(path), offset, write)


def _read(path: Path, offset: int, write: Write) -> None:
    with open(path, "rb") as fh:
        fh.seek(offset)
        while chunk := fh.read(CHUNK):
            write(chunk)


def parse_source_uri(text: str) -> SourceUri:
    """hf://ORG/REPO@<40-hex commit>[/subfolder]: pinned, since a branch moves;
    sources.uris.parse."""
    m = _URI.match(text)
    if m is None:
        raise BadSourceUri(text, "a Hugging Face source must be pinned by a full commit id",
                           "write hf://ORG/REPO@<40-hex commit>[/subfolder] (a branch can move)")
    return SourceUri(text, "hf", m["repo"], m["sub"] or "", m["rev"])


def source_reader() -> HfReader:
    """This scheme's reader, for the transport scheme registry (`hf+source`)."""
    return HfReader()
