"""One descriptor for "a file with a path, a size and a sha256", and its JSON form.

Action-cache outputs, registry file records, source lock entries, the files of an OCI model
artifact and a manifest's file list all describe the same thing; they share `FileRef` (a source
lock adds the upstream revision in its subclass, sources.lockfile.LockedFile). Each record
still writes its own JSON by hand, field by field, so every file format stays byte-identical;
`FileEntry` is the shape those JSON objects have, `FileRef.entry` / `FileRef.of` convert.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict


class FileEntry(TypedDict):
    """A file as JSON: POSIX path relative to its root, byte size, hex sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class FileRef:
    """A file: its POSIX path relative to a root, its byte size and its hex sha256."""

    path: str
    size: int
    sha256: str

    @property
    def digest(self) -> str:
        """The content digest as OCI and most registries write it: "sha256:<hex>"."""
        return "sha256:" + self.sha256

    def entry(self) -> FileEntry:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}

    @classmethod
    def of(cls, entry: FileEntry) -> FileRef:
        return cls(entry["path"], entry["size"], entry["sha256"])
