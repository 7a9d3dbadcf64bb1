"""hf:// offline from a Hugging Face cache laid out by huggingface_hub's own functions, and oci://
from a model artifact that modelkiln's own publisher pushed to the test docker-registry.

No hub is reachable here, so the hf:// online path (snapshot_download against HF_ENDPOINT) is not
tested: no real hub implementation can be run locally. The cache it would fill is built with
huggingface_hub's own layout functions (repo_folder_name, _get_pointer_path, _create_symlink,
_cache_commit_hash_for_specific_revision: what hf_hub_download calls after a download) and checked
with its scan_cache_dir; `kiln lock` and the build then read it with HF_HUB_OFFLINE=1.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import BIN, SPEC, make_project
from modelkiln.transport.oci import Registry
from ociregistry import DockerRegistry

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_hf_cache(hub_cache: Path, repo_id: str, checkpoint: Path) -> None:
    from huggingface_hub import file_download, scan_cache_dir
    from huggingface_hub.utils.sha import git_hash, sha_fileobj

    storage = hub_cache / file_download.repo_folder_name(repo_id=repo_id, repo_type="model")
    for f in sorted(checkpoint.iterdir()):
        data = f.read_bytes()
        big = f.suffix == ".safetensors"  # LFS files are named by sha256, others by git blob id
        with open(f, "rb") as fh:
            etag = sha_fileobj(fh).hex() if big else git_hash(data)
        blob = storage / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        pointer = Path(file_download._get_pointer_path(str(storage), COMMIT, f.name))
        pointer.parent.mkdir(parents=True, exist_ok=True)
        file_download._create_symlink(str(blob), str(pointer), new_blob=False)
    file_download._cache_commit_hash_for_specific_revision(str(storage), "main", COMMIT)
    (info,) = scan_cache_dir(hub_cache).repos  # huggingface_hub reads it as its own cache
    assert info.repo_id == repo_id and {r.commit_hash for r in info.revisions} == {COMMIT}


def test_hf_source_offline_locks_and_builds(tmp_path: Path, tiny_inputs: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    hf_home = tmp_path / "hf-home"
    lay_out_hf_cache(hf_home / "hub", "acme/tiny", tiny_inputs / "checkpoint")
    for k, v in {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
                 "HF_ENDPOINT": "http://127.0.0.1:9", "KILN_SOURCE_CACHE": str(tmp_path / "fc")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    p = make_project(tmp_path / "p", tiny_inputs, spec=SPEC)
    p.edit("checkpoint: tiny/checkpoint", f"checkpoint: hf://acme/tiny@{COMMIT}")
    locked = p.kiln("lock", "tiny", "--json")
    assert locked.returncode == 0, locked.stderr
    (report,) = json.loads(locked.stdout)
    assert report["sources"][0]["resolved"] == COMMIT
    lock = (p.root / "bundles/tiny.lock").read_text()
    assert "model.safetensors" in lock and "tokenizer.json" in lock
    built = p.doit("build:tiny")
    assert built.code == 0, built.output
    assert "weights:tiny" in built.executed
    # a moving branch is refused: the lock must name a commit
    p.edit(f"checkpoint: hf://acme/tiny@{COMMIT}", "checkpoint: hf://acme/tiny@main")
    bad = p.kiln("validate")
    assert bad.returncode == 3 and "full commit id" in bad.stderr


OCI_SPEC = SPEC + """\
publish:
  oci: {host}/models/src-tiny:{{version}}-{{backend}}
"""


@pytest.mark.oci
def test_oci_source_from_modelkilns_own_artifact(tmp_path: Path, tiny_inputs: Path,
                                                 oci_registry: DockerRegistry,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_SOURCE_CACHE", str(tmp_path / "fc"))
    first = make_project(tmp_path / "a", tiny_inputs,
                         spec=OCI_SPEC.replace("{host}", oci_registry.host))
    assert first.kiln("build", "--cache", "off").returncode == 0
    pub = subprocess.run([str(BIN / "kiln"), "publish"], cwd=first.root, capture_output=True,
                         text=True, timeout=600, env=os.environ.copy())
    assert pub.returncode == 0, pub.stderr
    reg = Registry(oci_registry.host)
    try:
        digest = reg.manifest_digest("models/src-tiny", "1.0.0-pytorch")
    finally:
        reg.close()
    assert digest
    # a second bundle starts from the first one's published artifact, pinned by digest
    uri = f"oci://{oci_registry.host}/models/src-tiny@{digest}"
    p = make_project(tmp_path / "b", tiny_inputs, name="tiny", spec=SPEC)
    p.edit("checkpoint: tiny/checkpoint", f"checkpoint: {uri}\n  tokenizer: {uri}/tokenizer")
    locked = p.kiln("lock", "tiny")
    assert locked.returncode == 0, locked.stderr
    lock = json.loads((p.root / "bundles/tiny.lock").read_text())
    assert {s["resolved"] for s in lock["sources"]} == {digest}  # the manifest: no blob hashed
    built = p.doit("build:tiny")
    assert built.code == 0, built.output
    ours = (p.root / "build/tiny/weights/model.safetensors").read_bytes()
    theirs = (first.root / "build/tiny/weights/model.safetensors").read_bytes()
    assert ours == theirs
