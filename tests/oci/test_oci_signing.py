"""Signed OCI artifacts against a real docker-registry (no referrers API: the `.sig` tag fallback).

Fast tests build the model artifact with the production builder from small real dist bundles
(tests/distfactory.py) signed by modelkiln; the slow one runs `kiln publish` on a real project.
Nothing leaves loopback.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from distfactory import make_dist
from helpers import SPEC, Project, make_project
from modelkiln import signing
from modelkiln.artifacts.oci import media, referrers
from modelkiln.artifacts.oci.build import model_artifact
from modelkiln.artifacts.oci.layout import OciLayout
from modelkiln.errors import ConflictError, SignatureError
from modelkiln.publish.oci import attach_signature, push
from modelkiln.runtime import bootstrap, oci_signature
from modelkiln.stages.image import bundle_files
from modelkiln.transport.oci import Reference, Registry
from ociregistry import DockerRegistry, need

pytestmark = pytest.mark.oci
SIG_TYPE = signing.SIGNATURE_MEDIA_TYPE


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Keys]:
    where = tmp_path_factory.mktemp("keys")
    return {who: Keys(*signing.generate(where, who)[:2]) for who in ("publisher", "stranger")}


def artifact_layout(root: Path, version: str, key: Keys | None, seed: int = 0) -> tuple[Path, Path]:
    """(layout dir, dist dir) of a bundle packed by the real packager, its model artifact built
    by the image stage's own functions, signed when `key` is given."""
    dist = make_dist(root, version=version, seed=seed, weights=30_000)
    if key is not None:
        signing.sign_dist(dist, signing.load_signing_key({signing.KEY_FILE_ENV: str(key.private)}))
    files, inner = bundle_files(dist)
    lay = OciLayout(root / f"oci-{version}-{seed}")
    lay.init()
    lay.put_bytes(inner, media.MODEL_WEIGHT_CONFIG_RAW)
    with tarfile.open(dist / "bundle.tar.gz") as tar:
        for m in tar.getmembers():
            src = tar.extractfile(m) if m.isfile() and m.name != "manifest.json" else None
            if src is not None:
                lay.put_bytes(src.read(), media.MODEL_WEIGHT_RAW)
    notes = {media.TITLE: "registry-v3", media.VERSION: version,
             media.BUNDLE_NAME: "registry-v3", media.BUNDLE_BACKEND: "pytorch",
             media.BUNDLE_MANIFEST: next(f.digest for f in files if f.path == "manifest.json"),
             media.KIND: "model"}
    art = model_artifact(lay, files, name="registry-v3", version=version, backend="pytorch",
                         description="", annotations=notes)
    lay.write_index([media.Descriptor(art.media_type, art.digest, art.size,
                                      ((media.REF_NAME, "model"),), art.artifact_type)])
    return lay.root, dist


def env_for(ref: str, runtime: Path, trusted: Keys | None, version: str | None = None
            ) -> dict[str, str]:
    env = {"MODEL_BACKEND": "pytorch", "REGISTRY_RUNTIME_DIR": str(runtime),
           "MODEL_BUNDLE_OCI_REF": ref}
    if trusted is not None:
        env["REGISTRY_TRUSTED_KEYS"] = str(trusted.public)
    if version is not None:
        env["MODEL_BUNDLE_VERSION"] = version
    return env


def current(runtime: Path) -> str | None:
    link = runtime / "pytorch" / "current"
    return os.readlink(link) if link.is_symlink() else None


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Keys],
              oci_registry: DockerRegistry) -> dict[str, tuple[Path, Path, str]]:
    """3.0.0 and 3.1.0 signed by the publisher, 2.0.0 unsigned; each pushed to models/sig:V."""
    root = tmp_path_factory.mktemp("signed")
    out: dict[str, tuple[Path, Path, str]] = {}
    for version, key in (("3.0.0", keys["publisher"]), ("3.1.0", keys["publisher"]),
                         ("2.0.0", None)):
        lay, dist = artifact_layout(root, version, key, seed=len(out))
        if key is not None:
            assert attach_signature(lay, ["model"], dist)
        target = f"{oci_registry.host}/models/sig:{version}"
        push(lay, "model", target)
        out[version] = (lay, dist, target)
    return out


def test_signature_in_the_layout_is_a_referrer_under_the_fallback_tag(
        published: dict[str, tuple[Path, Path, str]]) -> None:
    lay_dir, dist, _ = published["3.0.0"]
    lay = OciLayout(lay_dir)
    subject = lay.find("model")
    tag = f"sha256-{subject.hex}.sig"
    entry = lay.find(tag)
    assert entry.artifact_type == SIG_TYPE
    doc = json.loads(lay.read_blob(entry))
    assert doc["artifactType"] == SIG_TYPE
    assert doc["subject"] == {"mediaType": subject.media_type, "digest": subject.digest,
                              "size": subject.size}
    assert doc["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    (layer,) = doc["layers"]
    assert layer["mediaType"] == SIG_TYPE
    assert lay.read_blob(media.Descriptor.from_json(layer, "t")) == \
        (dist / "bundle.sig").read_bytes()
    raw = subprocess.run([need("skopeo"), "inspect", "--raw", f"oci:{lay_dir}:{tag}"],
                         check=True, capture_output=True).stdout
    assert json.loads(raw)["subject"]["digest"] == subject.digest  # an independent reader
    index = (lay_dir / "index.json").read_bytes()
    assert attach_signature(lay_dir, ["model"], dist)  # attaching again writes nothing
    assert (lay_dir / "index.json").read_bytes() == index


def test_signed_push_creates_the_fallback_tag_and_a_repush_sends_nothing(
        published: dict[str, tuple[Path, Path, str]], oci_registry: DockerRegistry) -> None:
    lay_dir, _, target = published["3.0.0"]
    lay = OciLayout(lay_dir)
    subject = lay.find("model")
    tag = referrers.fallback_tag(subject.digest)
    reg = Registry(oci_registry.host)
    try:
        assert reg.manifest_digest("models/sig", tag) == lay.find(tag).digest
        data, _, _ = reg.get_manifest("models/sig", tag)
        assert json.loads(data)["subject"]["digest"] == subject.digest
        # the unsigned version has no signature tag
        unsigned = OciLayout(published["2.0.0"][0]).find("model").digest
        assert reg.manifest_digest("models/sig", referrers.fallback_tag(unsigned)) is None
    finally:
        reg.close()
    again = push(lay_dir, "model", target)
    assert again.unchanged and again.bytes_uploaded == 0
    assert again.signature is not None and again.signature.unchanged
    assert again.signature.bytes_uploaded == 0


def test_a_signature_added_later_goes_up_alone(tmp_path: Path, keys: dict[str, Keys],
                                               oci_registry: DockerRegistry) -> None:
    lay, dist = artifact_layout(tmp_path, "4.0.0", None, seed=7)
    target = f"{oci_registry.host}/models/late:4.0.0"
    assert not push(lay, "model", target).unchanged
    signing.sign_dist(dist, signing.load_signing_key(
        {signing.KEY_FILE_ENV: str(keys["publisher"].private)}))
    assert attach_signature(lay, ["model"], dist)
    sent = push(lay, "model", target)
    assert sent.unchanged and sent.signature is not None and not sent.signature.unchanged
    sig_size = (dist / "bundle.sig").stat().st_size
    assert sent.signature.blobs_uploaded == 2  # the signature and the empty config
    assert sent.signature.bytes_uploaded > sig_size


def test_a_resigned_bundle_replaces_the_signature_and_keeps_the_subject(
        tmp_path: Path, keys: dict[str, Keys], oci_registry: DockerRegistry) -> None:
    """Key rotation: the same bundle signed again by a new key; the subject is unchanged, the
    `.sig` tag moves to the new signature without --force, and the new key verifies it."""
    lay, dist = artifact_layout(tmp_path / "a", "5.0.0", keys["stranger"], seed=9)
    attach_signature(lay, ["model"], dist)
    target = f"{oci_registry.host}/models/rotate:5.0.0"
    push(lay, "model", target)
    new, new_dist = artifact_layout(tmp_path / "b", "5.0.0", keys["publisher"], seed=9)
    attach_signature(new, ["model"], new_dist)
    subject = OciLayout(new).find("model").digest
    assert OciLayout(lay).find("model").digest == subject  # same bundle, another key
    sent = push(new, "model", target)
    assert sent.unchanged and sent.signature is not None and sent.signature.forced
    tag = referrers.fallback_tag(subject)
    reg = Registry(oci_registry.host)
    try:
        assert reg.manifest_digest("models/rotate", tag) == OciLayout(new).find(tag).digest
    finally:
        reg.close()
    rt = bootstrap(env_for(target, tmp_path / "rt", keys["publisher"]))
    assert rt.version == "5.0.0"


def test_a_subject_conflict_is_refused_before_its_signature_is_sent(
        tmp_path: Path, keys: dict[str, Keys], oci_registry: DockerRegistry) -> None:
    first, _ = artifact_layout(tmp_path / "a", "6.0.0", None, seed=11)
    target = f"{oci_registry.host}/models/conflict:6.0.0"
    push(first, "model", target)
    other, other_dist = artifact_layout(tmp_path / "b", "6.0.0", keys["publisher"], seed=12)
    attach_signature(other, ["model"], other_dist)
    with pytest.raises(ConflictError) as refused:
        push(other, "model", target)
    assert refused.value.exit_code == 5
    tag = referrers.fallback_tag(OciLayout(other).find("model").digest)
    reg = Registry(oci_registry.host)
    try:
        assert reg.manifest_digest("models/conflict", tag) is None  # nothing sent
    finally:
        reg.close()


def test_bootstrap_with_trusted_keys_accepts_a_signed_artifact(
        published: dict[str, tuple[Path, Path, str]], keys: dict[str, Keys],
        tmp_path: Path) -> None:
    _, dist, target = published["3.0.0"]
    rt = bootstrap(env_for(target, tmp_path / "rt", keys["publisher"], "3.0.0"))
    assert rt.version == "3.0.0" and rt.downloaded
    with tarfile.open(dist / "bundle.tar.gz") as tar:
        want = {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}
    got = {p.relative_to(rt.directory).as_posix(): p.read_bytes()
           for p in rt.directory.rglob("*") if p.is_file()}
    assert got == want
    assert not bootstrap(env_for(target, tmp_path / "rt", keys["publisher"])).downloaded


def test_wrong_key_is_refused_before_any_file_is_fetched(
        published: dict[str, tuple[Path, Path, str]], keys: dict[str, Keys],
        tmp_path: Path, oci_registry: DockerRegistry) -> None:
    lay_dir, _, target = published["3.0.0"]
    weights = next(d for d in json.loads(OciLayout(lay_dir).read_blob(
        OciLayout(lay_dir).find("model")))["layers"]
        if d["annotations"][media.FILEPATH] == "model.safetensors")
    blob = oci_registry.blob_file(weights["digest"])
    aside = blob.with_name("aside")
    blob.rename(aside)  # fetching the weights would now fail with a 404: the refusal comes first
    try:
        with pytest.raises(SignatureError, match="which is not trusted") as refused:
            bootstrap(env_for(target, tmp_path / "rt", keys["stranger"]))
    finally:
        aside.rename(blob)
    assert refused.value.exit_code == 7
    assert current(tmp_path / "rt") is None
    assert not any((tmp_path / "rt" / "pytorch" / "versions").glob("3.0.0*"))


def test_missing_signature_is_refused(published: dict[str, tuple[Path, Path, str]],
                                      keys: dict[str, Keys], tmp_path: Path) -> None:
    _, _, target = published["2.0.0"]
    with pytest.raises(SignatureError, match="no signature found") as refused:
        bootstrap(env_for(target, tmp_path / "rt", keys["publisher"]))
    assert "referrers API not offered (HTTP 404)" in str(refused.value)
    assert "tag sha256-" in str(refused.value) and current(tmp_path / "rt") is None
    # without trusted keys the same unsigned artifact is served, as before
    assert bootstrap(env_for(target, tmp_path / "rt", None)).version == "2.0.0"


@pytest.mark.parametrize("forge", ["copied manifest", "new manifest naming the subject"])
def test_replayed_signature_of_another_version_is_refused(
        published: dict[str, tuple[Path, Path, str]], keys: dict[str, Keys], tmp_path: Path,
        oci_registry: DockerRegistry, forge: str) -> None:
    """An attacker who can push puts 3.0.0's genuine signature beside 3.1.0's artifact."""
    old_lay, old_dist, old_target = published["3.0.0"]
    new_lay, _, _ = published["3.1.0"]
    runtime = tmp_path / "rt"
    bootstrap(env_for(old_target, runtime, keys["publisher"]))  # 3.0.0 is being served
    served = current(runtime)
    victim = OciLayout(new_lay).find("model")
    repo = f"models/replay-{len(forge)}"
    push(new_lay, "model", f"{oci_registry.host}/{repo}:3.1.0")
    tag = referrers.fallback_tag(victim.digest)
    if forge == "copied manifest":
        old = OciLayout(old_lay)
        push(old_lay, referrers.fallback_tag(old.find("model").digest),
             f"{oci_registry.host}/{repo}:{tag}", force=True)
    else:
        forged = OciLayout(tmp_path / "forged")
        forged.init()
        lay = OciLayout(new_lay)
        forged.put_bytes(lay.read_blob(victim), victim.media_type)
        forged.write_index([media.Descriptor(victim.media_type, victim.digest, victim.size,
                                             ((media.REF_NAME, "model"),))])
        referrers.attach(forged, ["model"], (old_dist / "bundle.sig").read_bytes(), SIG_TYPE)
        push(forged.root, tag, f"{oci_registry.host}/{repo}:{tag}", force=True)
    with pytest.raises(SignatureError, match="replayed") as refused:
        bootstrap(env_for(f"{oci_registry.host}/{repo}:3.1.0", runtime, keys["publisher"]))
    assert refused.value.exit_code == 7 and "3.0.0" in str(refused.value)
    assert current(runtime) == served  # still the verified 3.0.0


def test_kiln_bootstrap_refuses_in_one_line_with_exit_7(
        published: dict[str, tuple[Path, Path, str]], keys: dict[str, Keys],
        tmp_path: Path) -> None:
    env = {**os.environ, **env_for(published["3.0.0"][2], tmp_path / "rt", keys["stranger"])}
    done = subprocess.run([str(Path(sys.executable).parent / "kiln"), "bootstrap"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 7, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiln: ") and "not trusted" in lines[0]
    assert "Traceback" not in done.stderr and current(tmp_path / "rt") is None


class ReferrersRegistry(Registry):
    """The real docker-registry plus the one thing it lacks, an OCI 1.1 referrers answer
    (`listing`), so that the reader's referrers route runs; every other request is real."""

    def __init__(self, host: str, listing: list[dict[str, object]]):
        super().__init__(host)
        self.listing = listing

    def request(self, method: str, path: str, **kw: Any) -> Any:
        if "/referrers/" in path:
            body = json.dumps({"schemaVersion": 2, "mediaType": media.INDEX,
                               "manifests": self.listing}).encode()
            return SimpleNamespace(status=200, body=body, headers={})
        return super().request(method, path, **kw)


def _push_by_digest(reg: Registry, lay: OciLayout, repo: str, desc: media.Descriptor) -> None:
    doc = json.loads(lay.read_blob(desc))
    for blob in [doc["config"], *doc["layers"]]:
        if reg.blob_size(repo, blob["digest"]) is None:
            reg.upload_blob(repo, blob["digest"], blob["size"], lay.blob_path(blob["digest"]))
    reg.put_manifest(repo, desc.digest, lay.read_blob(desc), desc.media_type)


def test_a_signature_listed_only_by_the_referrers_api_is_verified(
        published: dict[str, tuple[Path, Path, str]], keys: dict[str, Keys],
        oci_registry: DockerRegistry) -> None:
    lay = OciLayout(published["3.0.0"][0])
    subject = lay.find("model")
    sig = lay.find(referrers.fallback_tag(subject.digest))
    repo = "models/only-referrers"
    ref = Reference.parse(f"{oci_registry.host}/{repo}@{subject.digest}")
    raw = lay.read_blob(media.Descriptor.from_json(next(
        d for d in json.loads(lay.read_blob(subject))["layers"]
        if d["annotations"][media.FILEPATH] == "manifest.json"), "t"))
    policy = signing.Policy(signing.load_trusted_keys([keys["publisher"].public]))
    junk = {"mediaType": media.MANIFEST, "digest": "sha256:" + "1" * 64, "size": 10,
            "artifactType": "application/example"}  # filtered out by its artifactType
    reg = ReferrersRegistry(oci_registry.host, [junk, sig.to_json()])
    try:
        _push_by_digest(reg, lay, repo, subject)
        _push_by_digest(reg, lay, repo, sig)  # no `.sig` tag in this repository
        record = oci_signature.verify(reg, ref, subject.digest, raw, policy, "t")
        assert record.version == "3.0.0"
        reg.listing = [junk]
        with pytest.raises(SignatureError, match=r"no signature found \(0 referrer"):
            oci_signature.verify(reg, ref, subject.digest, raw, policy, "t")
    finally:
        reg.close()


SIGNED_SPEC = SPEC + """\
image:
  repository: {host}/models/signed-tiny-image
  base: {base}
  backend: pytorch
  libraries: base     # the synthetic base stands in for one that carries them
  test: off
  push: true
publish:
  oci: {host}/models/signed-tiny:{{version}}-{{backend}}
"""


@pytest.mark.slow
def test_kiln_publish_signs_pushes_the_tag_and_the_build_converges(
        tmp_path: Path, tiny_inputs: Path, oci_registry: DockerRegistry, base_ref: str,
        keys: dict[str, Keys], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SIGNED_SPEC.replace("{host}", oci_registry.host).replace("{base}", base_ref)
    p: Project = make_project(tmp_path / "p", tiny_inputs, spec=spec)
    assert p.doit("build:tiny").code == 0
    monkeypatch.setenv(signing.KEY_FILE_ENV, str(keys["publisher"].private))
    done = p.kiln("publish")
    assert done.returncode == 0, done.stderr
    built = OciLayout(p.root / "dist/tiny/1.0.0/oci/pytorch")
    built_index = (built.root / "index.json").read_bytes()
    lay = OciLayout(p.root / "dist/tiny/1.0.0/oci/pytorch.signed")  # publish signs a copy
    subject = lay.find("model").digest
    assert subject == built.find("model").digest
    tag = referrers.fallback_tag(subject)
    reg = Registry(oci_registry.host)
    try:
        assert reg.manifest_digest("models/signed-tiny", tag) == lay.find(tag).digest
        image_sig = referrers.fallback_tag(lay.find("image").digest)
        assert reg.manifest_digest("models/signed-tiny-image", image_sig) == \
            lay.find(image_sig).digest
    finally:
        reg.close()
    index = (lay.root / "index.json").read_bytes()
    image_tag = referrers.fallback_tag(lay.find("image").digest)
    assert lay.find(image_tag).artifact_type == signing.SIGNATURE_MEDIA_TYPE
    monkeypatch.delenv(signing.KEY_FILE_ENV)
    # signing is not part of the build: the layout the image task built is untouched and
    # nothing reruns (issue 24 item 6); a second publish makes the same signed copy
    assert (built.root / "index.json").read_bytes() == built_index
    assert p.doit("build:tiny").executed == set()
    again = p.kiln("publish")
    assert again.returncode == 0, again.stderr
    assert (lay.root / "index.json").read_bytes() == index
    rt = bootstrap(env_for(f"{oci_registry.host}/models/signed-tiny:1.0.0-pytorch",
                           tmp_path / "rt", keys["publisher"], "1.0.0"))
    assert rt.version == "1.0.0"
