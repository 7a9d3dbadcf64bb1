"""Signed publish and verified bootstrap against a real S3 server (SeaweedFS on loopback)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelkiln.artifacts import names
from modelkiln.errors import SignatureError
from modelkiln.publish import publish_bundle
from modelkiln.runtime import bootstrap
from signing.signkit import KeyPair, signed_dist

pytestmark = pytest.mark.s3


def test_signed_bundle_over_s3(tmp_path: Path, s3: Any, key: KeyPair,
                               other_key: KeyPair) -> None:
    dist = signed_dist(tmp_path, key)
    result = publish_bundle(dist, s3.uri("registry/3.0.0/pytorch/"))
    assert result.uploaded == (names.ARCHIVE, names.SIGNATURE, names.PROVENANCE, names.MANIFEST)
    head = s3.client.head_object(Bucket=s3.bucket, Key=s3.prefix + "registry/3.0.0/pytorch/"
                                 + names.SIGNATURE)
    assert head["ContentType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert publish_bundle(dist, s3.uri("registry/3.0.0/pytorch/")).unchanged

    env = {"MODEL_BACKEND": "pytorch", "MODEL_BUNDLE_S3_URI_PYTORCH": result.archive_uri,
           "REGISTRY_RUNTIME_DIR": str(tmp_path / "rt"), "REGISTRY_TRUSTED_KEYS": str(key.public),
           "MODEL_BUNDLE_VERSION": "3.0.0"}
    assert bootstrap(env).version == "3.0.0"
    with pytest.raises(SignatureError, match="which is not trusted"):
        bootstrap({**env, "REGISTRY_TRUSTED_KEYS": str(other_key.public)})
