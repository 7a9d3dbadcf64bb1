"""The registry client against a real docker-registry: uploads (one PUT or chunked PATCHes),
HEAD before sending, manifests checked by digest, and a tampered manifest refused."""
from __future__ import annotations

import hashlib
import io
import os

import pytest

from modelkiln.errors import PublishError
from modelkiln.transport.oci import Registry
from ociregistry import DockerRegistry

pytestmark = pytest.mark.oci


@pytest.mark.parametrize("chunk", [None, 100_000])
def test_upload_then_read_back_by_digest(oci_registry: DockerRegistry, chunk: int | None) -> None:
    data = os.urandom(350_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    reg = Registry(oci_registry.host)
    try:
        assert reg.blob_size("t/client", digest) is None
        assert reg.upload_blob("t/client", digest, len(data), data, chunk=chunk) == len(data)
        assert reg.blob_size("t/client", digest) == len(data)
        out = io.BytesIO()
        reg.get_blob("t/client", digest, len(data), out)
        assert out.getvalue() == data
    finally:
        reg.close()


def test_a_wrong_declared_digest_is_refused_by_the_registry(oci_registry: DockerRegistry) -> None:
    reg = Registry(oci_registry.host)
    try:
        with pytest.raises(PublishError, match="HTTP 400"):
            reg.upload_blob("t/client", "sha256:" + "0" * 64, 3, b"abc")
    finally:
        reg.close()


def test_a_tampered_manifest_is_refused(oci_registry: DockerRegistry) -> None:
    reg = Registry(oci_registry.host)
    config = b"{}"
    cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
    reg.upload_blob("t/client", cdigest, len(config), config)
    manifest = (b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
                b'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"'
                + cdigest.encode() + b'","size":2},"layers":[]}')
    digest = reg.put_manifest("t/client", "v1", manifest,
                              "application/vnd.oci.image.manifest.v1+json")
    assert reg.get_manifest("t/client", digest)[0] == manifest
    stored = oci_registry.blob_file(digest)
    stored.write_bytes(manifest.replace(b'"layers":[]', b'"layers":[ ]'))
    try:
        for ref in (digest, "v1"):
            with pytest.raises(PublishError, match="tampered"):
                reg.get_manifest("t/client", ref)
    finally:
        stored.write_bytes(manifest)
        reg.close()
