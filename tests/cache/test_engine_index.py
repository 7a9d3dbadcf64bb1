"""The TensorRT engine index: listing on both media (S3 across pages), entries that parse only
when they describe one engine's files safely, first writer wins, read-only runs write nothing."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelkiln.cache import ActionCache, BlobRef, open_place
from modelkiln.cache.engine_index import (
    EngineEntry,
    entry_key,
    list_entries,
    put_entry,
)
from modelkiln.cache.records import BadRecord
from modelkiln.transport import Bucket, Location, bucket

FAMILY, OTHER = "f" * 64, "e" * 64
PLATFORM = "sm80-trt10.3.0-cuda12"


def entry(**changes: Any) -> EngineEntry:
    files = (BlobRef("engines/sm80/engine.json", 4, "b" * 64),
             BlobRef("engines/sm80/model.plan", 3, "a" * 64),
             BlobRef("parity/sm80/engine.npy", 5, "c" * 64))  # sorted by path, as stored
    values: dict[str, Any] = {"family": FAMILY, "platform": PLATFORM, "sm": "sm80",
                              "key_sha256": "d" * 64, "task": "trt:tiny", "record": "0" * 64,
                              "files": files, **changes}
    return EngineEntry(**values)


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "file":
        return open_place((tmp_path / "cache").as_uri())
    s3 = request.getfixturevalue("s3")
    return open_place(s3.uri("cache"))


def test_list_keys_returns_one_prefix_across_pages(store: Location,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bucket, "LIST_PAGE", 2)  # five keys: three ListObjectsV2 pages on S3
    keys = [f"engines/{FAMILY}/sm{n}0-trt10.3.0-cuda12.json" for n in (5, 7, 8, 9, 10)]
    for key in reversed(keys):
        store.put_bytes(key, b"{}")
    store.put_bytes(f"engines/{OTHER}/sm80-trt10.3.0-cuda12.json", b"{}")  # another family
    store.put_bytes("ac/x.json", b"{}")
    assert store.list_keys(f"engines/{FAMILY}/") == sorted(keys)
    assert store.list_keys("engines/nothing-here/") == []


def test_a_directory_listing_leaves_out_temp_files(tmp_path: Path) -> None:
    local = open_place((tmp_path / "cache").as_uri())
    local.put_bytes(f"engines/{FAMILY}/a.json", b"{}")
    (tmp_path / "cache" / "engines" / FAMILY / ".a.json.1234.tmp").write_bytes(b"half")
    assert local.list_keys(f"engines/{FAMILY}/") == [f"engines/{FAMILY}/a.json"]


def test_entries_round_trip_and_refuse_what_is_unsafe_or_misfiled() -> None:
    good = entry()
    assert EngineEntry.from_bytes(good.to_bytes(), FAMILY, PLATFORM) == good
    with pytest.raises(BadRecord, match="differs from where it is filed"):
        EngineEntry.from_bytes(good.to_bytes(), OTHER, PLATFORM)
    with pytest.raises(BadRecord, match="differs from where it is filed"):
        EngineEntry.from_bytes(good.to_bytes(), FAMILY, "sm90-trt10.3.0-cuda12")
    bad = {
        "outside": entry(files=(*good.files, BlobRef("engines/sm80/../../../etc/x", 1, "a" * 64))),
        "other sm": entry(files=(*good.files, BlobRef("engines/sm90/model.plan", 1, "a" * 64))),
        "no plan": entry(files=(good.files[0], good.files[2])),
        "platform": entry(platform="../sm80"),
        "sm": entry(sm="sm80/.."),
        "digest": entry(record="not-a-digest"),
    }
    for name, e in bad.items():
        assert e.problem() is not None, name
        with pytest.raises(BadRecord):
            EngineEntry.from_bytes(e.to_bytes(), e.family, e.platform)


def test_first_writer_wins_and_read_only_writes_nothing(tmp_path: Path) -> None:
    logged: list[str] = []
    local = open_place((tmp_path / "cache").as_uri())
    reader = ActionCache(local, write=False, log=logged.append)
    assert not put_entry(reader, entry())
    assert local.list_keys("engines/") == []
    writer = ActionCache(local, write=True, log=logged.append)
    assert put_entry(writer, entry())
    assert not put_entry(writer, entry(key_sha256="9" * 64))  # a later runner of the platform
    assert [e for e, _ in list_entries(reader, FAMILY)] == [entry()]
    # a malformed entry is left out with a warning, the rest still listed
    local.put_bytes(entry_key(FAMILY, "sm90-trt10.3.0-cuda12"), b"{not json")
    assert [e.platform for e, _ in list_entries(reader, FAMILY)] == [PLATFORM]
    assert any("is unusable (not JSON" in line for line in logged)
    assert not logged[:-1]  # nothing else was worth a warning


@pytest.mark.s3
@pytest.mark.parametrize("route", ["stdlib", "boto3"])
def test_s3_listing_without_boto3_matches_boto3(s3: Any, monkeypatch: pytest.MonkeyPatch,
                                                 route: str) -> None:
    """A no-op check of a TensorRT bundle lists the index: the stdlib signed GET does it without
    importing boto3, page after page, and names the same keys (odd characters included)."""
    monkeypatch.setattr(bucket, "LIST_PAGE", 2)
    prefix = "engines/a b+c/"
    keys = [f"{prefix}{name}.json" for name in ("x ü", "y&z", "sm80", "sm90", "sm100")]
    for key in keys + ["engines/a b+d/other.json"]:
        s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}cache/{key}", Body=b"{}")
    store = open_place(s3.uri("cache"))
    assert isinstance(store, Bucket)
    if route == "boto3":
        assert store.client is not None  # a client exists: the listing goes through it
    assert store.list_keys(prefix) == sorted(keys)
    assert (store._client is None) == (route == "stdlib")


def test_list_request_signature_matches_the_aws_documented_example() -> None:
    """AWS S3 API reference, "Signature Calculations ... Example: GET Bucket (List Objects)"."""
    from datetime import UTC, datetime

    from modelkiln.transport import s3lite

    headers = s3lite._sign("GET", "examplebucket.s3.amazonaws.com", "/", "us-east-1",
                           {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
                            "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"},
                           datetime(2013, 5, 24, tzinfo=UTC),
                           query=s3lite._query({"prefix": "J", "max-keys": "2"}))
    assert headers["authorization"].endswith(
        "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
