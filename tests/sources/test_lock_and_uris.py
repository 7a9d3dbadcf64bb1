"""Source URIs and the lock file on their own: what must be pinned, and a lock that is not one."""
from __future__ import annotations

from pathlib import Path

import pytest

from modelkiln.errors import ExitCode
from modelkiln.sources.lockfile import BadLock, LockedFile, LockEntry, read, render, write
from modelkiln.sources.uris import BadSourceUri, is_remote, parse

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize("uri", ["oci://h:5000/models/x:latest", "oci://h/models/x",
                                 "hf://acme/tiny@main", "hf://acme/tiny", "s3://bucket",
                                 "s3://bucket//x", "s3://b/../x/"])
def test_a_moving_or_incomplete_reference_is_refused(uri: str) -> None:
    with pytest.raises(BadSourceUri) as exc:
        parse(uri)
    assert exc.value.fix


def test_pinned_references_parse() -> None:
    oci = parse(f"oci://127.0.0.1:5000/models/x@{DIGEST}/tokenizer")
    assert (oci.where, oci.path, oci.pin, oci.sub) == ("127.0.0.1:5000", "models/x", DIGEST, "tokenizer")
    hf = parse("hf://acme/tiny@" + "0" * 40 + "/onnx")
    assert (hf.where, hf.pin, hf.path) == ("acme/tiny", "0" * 40, "onnx")
    assert parse("s3://b/k.jsonl").single and not parse("s3://b/p/").single
    assert not is_remote("bundles/x/checkpoint") and not is_remote("file:///x") and is_remote("gs://b/p/")


def test_lock_round_trips_and_is_stable(tmp_path: Path) -> None:
    e = LockEntry("s3://b/p/", "sha256:" + "1" * 64,
                  (LockedFile("b.safetensors", 2, "2" * 64, "etag:\"x\""), LockedFile("a.json", 1, "3" * 64)))
    path = tmp_path / "x.lock"
    assert write(path, [e]) and not write(path, [e])  # the same entries: the same bytes, no write
    got = read(path)
    assert got is not None and [f.path for f in got["s3://b/p/"].files] == ["a.json", "b.safetensors"]
    assert render([e]).count(b"\n") == 13  # one file per line


@pytest.mark.parametrize("text", ["", "[]", '{"version": 9, "sources": []}', "{" * 100_000,
                                  '{"version": 1, "sources": [{"uri": "s3://b/p/", "resolved": "x",'
                                  ' "files": [{"path": "../etc/passwd", "size": 1, "sha256": "' + "0" * 64 + '"}]}]}'])
def test_a_broken_lock_is_one_spec_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "x.lock"
    path.write_text(text)
    with pytest.raises(BadLock) as exc:
        read(path)
    assert exc.value.exit_code == ExitCode.SPEC and "kiln lock x" in str(exc.value)
