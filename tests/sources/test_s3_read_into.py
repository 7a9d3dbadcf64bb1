"""The S3 reader's body reader on a botocore body without urllib3's raw stream: the chunked
fallback fills the buffer, and a body longer than the range is reported as a wrong length
(a real SeaweedFS answers through the raw stream, so this path needs a stand-in body)."""
from __future__ import annotations

from collections.abc import Iterator

from modelkiln.sources.s3 import _read_into


class ChunkedBody:
    """Only what botocore's StreamingBody offers everywhere: iter_chunks."""

    def __init__(self, data: bytes):
        self.data = data

    def iter_chunks(self, size: int) -> Iterator[bytes]:
        for at in range(0, len(self.data), 3):
            yield self.data[at:at + 3]


def test_chunks_fill_the_buffer_in_order() -> None:
    buf = bytearray(10)
    assert _read_into(ChunkedBody(b"0123456789"), memoryview(buf)) == 10
    assert bytes(buf) == b"0123456789"


def test_a_short_or_long_body_is_not_the_asked_length() -> None:
    assert _read_into(ChunkedBody(b"01234"), memoryview(bytearray(10))) == 5
    assert _read_into(ChunkedBody(b"0123456789ab"), memoryview(bytearray(10))) == 11
