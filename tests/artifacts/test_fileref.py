"""One descriptor for "a file with path, size and sha256" (issue 21 item 3): the action cache's
outputs, the registry's file records, a source lock's files and an OCI artifact's bundle files
are all `artifacts.fileref.FileRef`, and every format that writes them is byte-identical to what
the separate types wrote (the expected bytes below were produced by modelkiln before the fold).
"""
from __future__ import annotations

import json

from modelkiln.artifacts import manifest as mf
from modelkiln.artifacts.fileref import FileRef
from modelkiln.artifacts.oci.build import BundleFile
from modelkiln.cache.records import ActionRecord, BlobRef
from modelkiln.registry.entries import FileRecord, RegistryEntry
from modelkiln.sources.lockfile import LockedFile, LockEntry, parse, render

RECORD = (
    b'{"inputs":{"bundles/x/a":"' + b"2" * 64 + b'"},"key":"' + b"ab" * 32 + b'",'
    b'"material":{},"outputs":[{"path":"a/b.bin","sha256":"' + b"0" * 64 + b'","size":3},'
    b'{"path":"c","sha256":"' + b"1" * 64 + b'","size":1}],'
    b'"outputs_digest":"c45399f053de57592ae98047032ac3767fffb31b752adf8e067b9373f54d7f19",'
    b'"report":{"x":1},"schema":2,"stage":"weights","task":"weights:x"}\n')
REGISTRY = ('{"name": "m", "files": [{"path": "w.bin", "size": 5, "sha256": "' + "3" * 64
            + '"}]}')
LOCK = ('{\n  "version": 1,\n  "sources": [\n    {\n      "uri": "s3://b/p/",\n'
        '      "resolved": "s3://b/p/",\n      "files": [\n'
        '        {"path": "a é", "size": 0, "sha256": "' + "5" * 64 + '", "ref": ""},\n'
        '        {"path": "x.json", "size": 2, "sha256": "' + "4" * 64 + '", "ref": "v1"}\n'
        '      ]\n    }\n  ]\n}\n').encode()


def test_the_five_descriptors_are_one_type() -> None:
    assert BlobRef is FileRef and FileRecord is FileRef and BundleFile is FileRef
    assert issubclass(LockedFile, FileRef)
    assert mf.FileEntry is mf.ArchiveEntry
    ref = FileRef("a/b", 3, "f" * 64)
    assert ref.digest == "sha256:" + "f" * 64
    assert FileRef.of(ref.entry()) == ref
    assert list(ref.entry()) == ["path", "size", "sha256"]


def test_cache_records_are_byte_identical() -> None:
    rec = ActionRecord(key="ab" * 32, task="weights:x", stage="weights",
                       outputs=(BlobRef("a/b.bin", 3, "0" * 64), BlobRef("c", 1, "1" * 64)),
                       report={"x": 1}, inputs={"bundles/x/a": "2" * 64})
    assert rec.to_bytes() == RECORD
    assert ActionRecord.from_bytes(RECORD, "ab" * 32) == rec


def test_registry_file_records_are_byte_identical() -> None:
    entry = RegistryEntry.from_dict(json.loads(REGISTRY))
    assert entry.files == (FileRef("w.bin", 5, "3" * 64),)
    assert json.dumps(entry.to_dict()) == REGISTRY


def test_lock_files_are_byte_identical() -> None:
    files = (LockedFile("x.json", 2, "4" * 64, "v1"), LockedFile("a é", 0, "5" * 64))
    assert render([LockEntry("s3://b/p/", "s3://b/p/", files)]) == LOCK
    assert render(list(parse(json.loads(LOCK)).values())) == LOCK
