"""Deterministic layers and the OCI layout, checked with Python's tarfile and Debian's umoci."""
from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from modelkiln.artifacts.oci import media
from modelkiln.artifacts.oci.build import image_config
from modelkiln.artifacts.oci.layers import Entry, write_layer
from modelkiln.artifacts.oci.layout import OciLayout
from modelkiln.errors import KilnError
from modelkiln.transport.oci import Reference
from ociregistry import need


def _entries(tmp: Path) -> list[Entry]:
    src = tmp / "weights.bin"
    src.write_bytes(bytes(range(256)) * 4000)
    return [Entry("opt/model/weights.bin", src), Entry("opt/app/run.sh", b"#!/bin/sh\n", 0o755),
            Entry("opt/model/a.json", b'{"a": 1}')]


@pytest.mark.parametrize("gz", [False, True])
def test_same_entries_same_bytes_whatever_the_order_or_mtime(tmp_path: Path, gz: bool) -> None:
    entries = _entries(tmp_path)
    one = write_layer(tmp_path / "one", entries, gzip=gz)
    (tmp_path / "weights.bin").touch()  # new mtime, same bytes
    two = write_layer(tmp_path / "two", list(reversed(entries)), gzip=gz)
    assert one == two
    assert (tmp_path / "one").read_bytes() == (tmp_path / "two").read_bytes()
    raw = (tmp_path / "one").read_bytes()
    if gz:
        assert raw[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, mtime 0
        assert one.media_type == media.LAYER_GZIP and one.digest != one.diff_id
        raw = gzip.decompress(raw)
    else:
        assert one.digest == one.diff_id and one.media_type == media.LAYER_TAR
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["opt", "opt/app", "opt/app/run.sh", "opt/model",
                                         "opt/model/a.json", "opt/model/weights.bin"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    modes = {m.name: m.mode for m in members}
    assert modes["opt/app/run.sh"] == 0o755 and modes["opt/model/a.json"] == 0o644
    assert modes["opt/model"] == 0o755


def test_a_changed_byte_changes_the_digest(tmp_path: Path) -> None:
    entries = _entries(tmp_path)
    one = write_layer(tmp_path / "one", entries, gzip=True)
    entries[2] = Entry("opt/model/a.json", b'{"a": 2}')
    assert write_layer(tmp_path / "two", entries, gzip=True).digest != one.digest


def test_unsafe_entry_paths_are_refused(tmp_path: Path) -> None:
    for bad in ("/etc/passwd", "a/../../b", ""):
        with pytest.raises(ValueError):
            write_layer(tmp_path / "x", [Entry(bad, b"x")], gzip=False)


def test_umoci_unpacks_an_image_we_write(tmp_path: Path) -> None:
    umoci = need("umoci")
    lay = OciLayout(tmp_path / "layout")
    lay.init()
    tmp = lay.root / "blobs" / "sha256" / ".part"
    layer = write_layer(tmp, _entries(tmp_path), gzip=True)
    lay.adopt(tmp, layer.digest)
    config = lay.put_bytes(image_config(None, "linux/amd64", [layer.diff_id], ["test layer"],
                                        {"REGISTRY_X": "1"}, ["/opt/app/run.sh"], {}, "/"),
                           media.IMAGE_CONFIG)
    man = lay.put_bytes(media.manifest_bytes(config, [layer.descriptor()]), media.MANIFEST)
    lay.write_index([media.Descriptor(man.media_type, man.digest, man.size,
                                      ((media.REF_NAME, "t"),))])
    subprocess.run([umoci, "unpack", "--rootless", "--image", f"{lay.root}:t",
                    str(tmp_path / "bundle")], check=True, capture_output=True)
    rootfs = tmp_path / "bundle" / "rootfs"
    assert (rootfs / "opt/model/weights.bin").read_bytes() == (tmp_path / "weights.bin").read_bytes()
    assert (rootfs / "opt/app/run.sh").stat().st_mode & 0o777 == 0o755
    runtime = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert "REGISTRY_X=1" in runtime["process"]["env"]


def test_layout_refuses_a_damaged_blob(tmp_path: Path) -> None:
    lay = OciLayout(tmp_path)
    lay.init()
    desc = lay.put_bytes(b'{"x":1}', media.IMAGE_CONFIG)
    assert lay.read_blob(desc) == b'{"x":1}'
    lay.blob_path(desc.digest).write_bytes(b'{"x":2}')
    with pytest.raises(KilnError, match="does not match its digest"):
        lay.read_blob(desc)


def test_references() -> None:
    r = Reference.parse("oci://127.0.0.1:5000/models/tiny:1.0.0-onnx")
    assert (r.host, r.repository, r.tag, r.digest) == ("127.0.0.1:5000", "models/tiny",
                                                       "1.0.0-onnx", None)
    pinned = Reference.parse("registry.example.com/a/b@sha256:" + "0" * 64)
    assert pinned.ref == "sha256:" + "0" * 64 and pinned.tag is None
    for bad in ("python:3.11", "tiny", "host.example.com/UPPER:x"):
        with pytest.raises(KilnError, match="not an OCI reference"):
            Reference.parse(bad)
