"""Build provenance: an in-toto Statement v1 with a SLSA Provenance v1 predicate that names the
spec digest, every input digest, the tool and modelkiln versions, the git revision and the
builder; signed like the bundle signature and refused when it is about other bytes."""
from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from modelkiln import __version__, signing
from modelkiln.artifacts import manifest as mf
from modelkiln.artifacts import names
from modelkiln.artifacts.tarball import write_tarball
from modelkiln.errors import SignatureError
from signing.signkit import KeyPair

INPUTS = {"bundles/registry-v3/checkpoint/model.safetensors": "a" * 64,
          "bundles/registry-v3/calibration.jsonl": "b" * 64}
TOOLS = {"torch": "2.13.0", "transformers": "4.57.6"}


def _dist(root: Path, version: str = "3.0.0") -> Path:
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "config.json").write_text('{"model_type": "bert"}')
    (src / "thresholds.json").write_text('{"a": 0.5}')
    manifest = mf.build(name="registry-v3", version=version, backend="onnx",
                        files=mf.file_entries(src, ["config.json", "thresholds.json"]),
                        inputs=INPUTS, spec_digest="c" * 64, tools=TOOLS)
    inner = root / "inner.json"
    inner.write_bytes(mf.dumps(manifest))
    dist = root / "dist"
    dist.mkdir()
    size, sha = write_tarball(dist / names.ARCHIVE, [("config.json", src / "config.json"),
                                                     (names.MANIFEST, inner),
                                                     ("thresholds.json", src / "thresholds.json")])
    (dist / names.MANIFEST).write_bytes(mf.dumps(mf.with_archive(manifest, size, sha)))
    return dist


def _git_repo(path: Path) -> str:
    path.mkdir()
    git = ["git", "-C", str(path), "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (path / "README").write_text("x\n")
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def _statement(path: Path) -> dict[str, object]:
    doc = json.loads(path.read_bytes())
    return json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))  # type: ignore[no-any-return]


def test_provenance_names_spec_inputs_tools_source_and_builder(tmp_path: Path,
                                                               key: KeyPair) -> None:
    dist = _dist(tmp_path)
    head = _git_repo(tmp_path / "project")
    env = {"KILN_BUILDER_ID": "https://ci.example.invalid/runners/7",
           "KILN_INVOCATION_ID": "https://ci.example.invalid/runs/42"}
    signing.sign_dist(dist, key.signing_key(), root=tmp_path / "project", env=env)
    st = _statement(dist / names.PROVENANCE)
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    published = json.loads((dist / names.MANIFEST).read_bytes())
    assert {s["name"]: s["digest"]["sha256"] for s in st["subject"]} == {  # type: ignore[attr-defined]
        names.ARCHIVE: published["archive"]["sha256"],
        names.MANIFEST: signing.verify_bundle((dist / names.MANIFEST).read_bytes(),
                                              (dist / names.SIGNATURE).read_bytes(),
                                              key.trusted()).manifest_sha256}
    build = st["predicate"]["buildDefinition"]  # type: ignore[index]
    assert build["externalParameters"]["spec"]["digest"] == {"sha256": "c" * 64}
    assert build["internalParameters"]["tools"] == TOOLS
    deps = build["resolvedDependencies"]
    assert {d["name"]: d["digest"]["sha256"] for d in deps if "name" in d} == INPUTS
    git = [d for d in deps if "gitCommit" in d["digest"]]
    assert git[0]["digest"]["gitCommit"] == head and git[0]["annotations"] == {"dirty": False}
    run = st["predicate"]["runDetails"]  # type: ignore[index]
    assert run["builder"]["id"] == env["KILN_BUILDER_ID"]
    assert run["builder"]["version"]["modelkiln"] == __version__
    assert run["metadata"] == {"invocationId": env["KILN_INVOCATION_ID"]}

    record = signing.verify_bundle((dist / names.MANIFEST).read_bytes(),
                                   (dist / names.SIGNATURE).read_bytes(), key.trusted())
    prov = signing.verify_provenance((dist / names.PROVENANCE).read_bytes(), key.trusted(),
                                     record, "provenance")
    assert prov.source_commit == head and prov.spec_digest == "c" * 64
    assert dict(prov.inputs) == INPUTS and dict(prov.tools) == TOOLS


def test_provenance_of_another_bundle_or_key_is_refused(tmp_path: Path, key: KeyPair,
                                                        other_key: KeyPair) -> None:
    one, two = _dist(tmp_path / "one"), _dist(tmp_path / "two", version="3.0.1")
    for dist in (one, two):
        signing.sign_dist(dist, key.signing_key())
    record = signing.verify_bundle((one / names.MANIFEST).read_bytes(),
                                   (one / names.SIGNATURE).read_bytes(), key.trusted())
    with pytest.raises(SignatureError, match="is about other bytes"):
        signing.verify_provenance((two / names.PROVENANCE).read_bytes(), key.trusted(), record,
                                  "provenance")
    with pytest.raises(SignatureError, match="not trusted"):
        signing.verify_provenance((one / names.PROVENANCE).read_bytes(), other_key.trusted(),
                                  record, "provenance")


def test_no_git_checkout_means_no_source_revision(tmp_path: Path, key: KeyPair) -> None:
    dist = _dist(tmp_path)
    (tmp_path / "plain").mkdir()
    signing.sign_dist(dist, key.signing_key(), root=tmp_path / "plain")
    deps = _statement(dist / names.PROVENANCE)["predicate"]["buildDefinition"][  # type: ignore[index]
        "resolvedDependencies"]
    assert not [d for d in deps if "gitCommit" in d["digest"]]
