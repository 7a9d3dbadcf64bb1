"""Images and model artifacts end to end, against a real docker-registry, read back by skopeo and
umoci: a tiny real model is built with the real `doit`, on a synthetic base pushed by code.

One project per module; tests run in file order (the thresholds edit comes after the first push).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from helpers import SPEC, Project, make_project
from modelkiln.artifacts.oci import media
from modelkiln.artifacts.oci.layout import OciLayout
from modelkiln.errors import ConflictError, PublishError
from modelkiln.publish.oci import push
from modelkiln.runtime import bootstrap
from ociregistry import DockerRegistry, need

pytestmark = [pytest.mark.slow, pytest.mark.oci]

IMAGE_SPEC = SPEC + """\
image:
  repository: {host}/models/tiny
  base: {base}
  backend: pytorch
  libraries: base     # the synthetic base stands in for one that carries them
  test: off
  push: true
publish:
  oci: {host}/models/tiny-model:{{version}}-{{backend}}
"""


def _spec(host: str, base: str) -> str:
    # make_project formats the spec with name=...; {{version}} comes out as {version}
    return IMAGE_SPEC.replace("{host}", host).replace("{base}", base)


def _layout(p: Project) -> OciLayout:
    return OciLayout(p.root / "dist" / "tiny" / "1.0.0" / "oci" / "pytorch")


def _manifest(lay: OciLayout, tag: str) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(lay.read_blob(lay.find(tag)))
    return manifest


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_inputs: Path,
            oci_registry: DockerRegistry, base_ref: str) -> Project:
    p = make_project(tmp_path_factory.mktemp("oci"), tiny_inputs,
                     spec=_spec(oci_registry.host, base_ref))
    run = p.doit("build:tiny")
    assert run.code == 0, run.output
    assert "image:tiny-pytorch" in run.executed
    return p


def test_layout_is_read_by_skopeo_and_umoci(project: Project, tmp_path: Path) -> None:
    skopeo, umoci = need("skopeo"), need("umoci")
    lay = _layout(project)
    info = json.loads(subprocess.run([skopeo, "inspect", f"oci:{lay.root}:image"], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["Labels"][media.VERSION] == "1.0.0"
    assert "REGISTRY_THRESHOLDS_PATH=/opt/model/thresholds.json" in info["Env"]
    assert "LANG=C.UTF-8" in info["Env"]  # the base's environment is kept
    subprocess.run([umoci, "unpack", "--rootless", "--image", f"{lay.root}:image",
                    str(tmp_path / "b")], check=True, capture_output=True)
    rootfs = tmp_path / "b" / "rootfs"
    assert (rootfs / "usr/bin/python3").is_file()  # from the base
    assert (rootfs / "opt/modelkiln/entrypoint.sh").stat().st_mode & 0o777 == 0o755
    assert (rootfs / "opt/modelkiln/lib/modelkiln/runtime/bootstrap.py").is_file()
    with tarfile.open(project.dist() / "bundle.tar.gz") as tar:
        for m in tar.getmembers():
            if m.isfile():
                assert (rootfs / "opt/model" / m.name).read_bytes() == \
                    tar.extractfile(m).read(), m.name  # type: ignore[union-attr]
    process = json.loads((tmp_path / "b" / "config.json").read_text())["process"]
    assert process["args"] == ["/opt/modelkiln/entrypoint.sh"]
    notes = _manifest(lay, "image")["annotations"]
    inner = (rootfs / "opt/model/manifest.json").read_bytes()
    assert notes[media.BUNDLE_MANIFEST] == "sha256:" + hashlib.sha256(inner).hexdigest()
    assert notes[media.BASE_DIGEST] in project.spec.read_text()
    assert "FROM " + notes[media.BASE_NAME] in (lay.root / "Dockerfile").read_text()


def test_entrypoint_verifies_the_baked_bundle(project: Project, tmp_path: Path) -> None:
    """Run the image's entrypoint (sh) against its unpacked rootfs, paths pointed there."""
    lay = _layout(project)
    subprocess.run([need("umoci"), "unpack", "--rootless", "--image", f"{lay.root}:image",
                    str(tmp_path / "b")], check=True, capture_output=True)
    rootfs = tmp_path / "b" / "rootfs"
    env = {"PATH": "/usr/bin:/bin", "REGISTRY_VERIFY": "full",
           "REGISTRY_BUNDLE_DIR": str(rootfs / "opt/model"),
           "PYTHONPATH": str(rootfs / "opt/modelkiln/lib"), "MODEL_BACKEND": "pytorch"}
    ok = subprocess.run(["sh", str(rootfs / "opt/modelkiln/entrypoint.sh")], env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "MODEL_BACKEND=pytorch" in ok.stdout
    (rootfs / "opt/model/thresholds.json").write_text("{}")
    bad = subprocess.run(["sh", str(rootfs / "opt/modelkiln/entrypoint.sh"), "true"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "thresholds.json" in bad.stderr


def test_two_clean_builds_give_the_same_digests(project: Project, tiny_inputs: Path,
                                                tmp_path: Path) -> None:
    other = make_project(tmp_path / "clone", tiny_inputs,
                         spec=project.spec.read_text().replace("{", "{{").replace("}", "}}"))
    run = other.doit("build:tiny")
    assert run.code == 0, run.output
    # The runtime layer carries modelkiln's own source. In a tree that others edit while the
    # suite runs, bring both builds up to date with the source as it is now (no-ops otherwise).
    for _ in range(3):
        if _layout(project).find("image") == _layout(other).find("image"):
            break
        assert project.doit("build:tiny").code == 0 and other.doit("build:tiny").code == 0
    for tag in ("model", "image"):
        mine, theirs = _manifest(_layout(project), tag), _manifest(_layout(other), tag)
        assert mine == theirs, (tag, [a.get("annotations", i)
                                      for i, (a, b) in enumerate(zip(mine["layers"],
                                                                     theirs["layers"],
                                                                     strict=True)) if a != b])
        assert _layout(other).find(tag).digest == _layout(project).find(tag).digest, tag


def test_publish_pushes_artifact_and_image_and_records_them(project: Project,
                                                            oci_registry: DockerRegistry) -> None:
    done = project.kiln("publish", "--to", f"oci://{oci_registry.host}/models/tiny-model:"
                        "{version}-{backend}")
    assert done.returncode == 0, done.stderr
    entry = json.loads((project.root / "configs/model_registry.discovered.json").read_text())
    art = entry["entries"][0]["artifacts"]
    assert art["oci"].endswith("@" + _layout(project).find("model").digest)
    assert art["image"].endswith("@" + _layout(project).find("image").digest)
    assert f"  oci image: {art['image']} (" in done.stdout, done.stdout  # the push is reported
    again = push(_layout(project).root, "image", f"{oci_registry.host}/models/tiny:1.0.0-pytorch")
    assert again.unchanged and again.bytes_uploaded == 0


def test_skopeo_copies_what_we_pushed(project: Project, oci_registry: DockerRegistry,
                                      tmp_path: Path) -> None:
    skopeo = need("skopeo")
    digest = _layout(project).find("image").digest
    subprocess.run([skopeo, "copy", "--preserve-digests", "--src-tls-verify=false",
                    f"docker://{oci_registry.host}/models/tiny@{digest}", f"oci:{tmp_path}/c:x"],
                   check=True, capture_output=True)
    assert OciLayout(tmp_path / "c").find("x").digest == digest  # byte-identical manifest
    subprocess.run([need("umoci"), "unpack", "--rootless", "--image", f"{tmp_path}/c:x",
                    str(tmp_path / "b")], check=True, capture_output=True)
    assert (tmp_path / "b/rootfs/opt/model/model.safetensors").is_file()


def test_pull_by_digest_reproduces_the_bundle(project: Project, oci_registry: DockerRegistry,
                                              tmp_path: Path) -> None:
    digest = _layout(project).find("model").digest
    env = {"MODEL_BACKEND": "pytorch", "REGISTRY_RUNTIME_DIR": str(tmp_path / "rt"),
           "MODEL_BUNDLE_OCI_REF": f"{oci_registry.host}/models/tiny-model@{digest}"}
    rt = bootstrap(env)
    assert rt.downloaded and rt.archive_sha256 == digest.split(":")[1]
    with tarfile.open(project.dist() / "bundle.tar.gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    got = {p.relative_to(rt.directory).as_posix(): p.read_bytes()
           for p in rt.directory.rglob("*") if p.is_file()}
    assert got == files
    assert not bootstrap(env).downloaded  # a restart on the same digest fetches one manifest


def test_thresholds_edit_changes_one_layer_and_pushes_only_it(project: Project,
                                                              oci_registry: DockerRegistry) -> None:
    lay = _layout(project)
    before = {t: _manifest(lay, t) for t in ("model", "image")}
    project.edit("  default: 0.5\n", "  default: 0.5\n  values: {alpha: 0.37}\n")
    run = project.doit("build:tiny")
    assert run.code == 0, run.output
    assert run.executed == {"thresholds:tiny", "package:tiny-pytorch", "image:tiny-pytorch"}
    after = {t: _manifest(lay, t) for t in ("model", "image")}
    old, new = [d["digest"] for d in before["image"]["layers"]], \
        [d["digest"] for d in after["image"]["layers"]]
    assert len(old) == len(new) == 6  # 2 base + runtime + weights + config + thresholds
    assert [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b] == [5]
    assert before["image"]["config"] != after["image"]["config"]
    files_before, files_after = ({d["annotations"][media.FILEPATH]: d["digest"]
                                  for d in m["model"]["layers"]} for m in (before, after))
    changed = {f for f, digest in files_after.items() if files_before.get(f) != digest}
    assert "model.safetensors" not in changed and "thresholds.json" in changed

    with pytest.raises(ConflictError) as conflict:  # the tag is immutable
        push(lay.root, "image", f"{oci_registry.host}/models/tiny:1.0.0-pytorch")
    assert conflict.value.exit_code == 5
    cli = project.kiln("publish")
    assert cli.returncode == 5, cli.stderr
    sent = push(lay.root, "image", f"{oci_registry.host}/models/tiny:1.0.0-pytorch", force=True)
    changed_layer = after["image"]["layers"][5]
    expected = changed_layer["size"] + after["image"]["config"]["size"] + lay.find("image").size
    assert (sent.blobs_uploaded, sent.blobs_skipped) == (2, 5)
    assert sent.bytes_uploaded == expected and sent.forced
    full = sum(d["size"] for d in after["image"]["layers"]) + after["image"]["config"]["size"]
    assert sent.bytes_uploaded < full


def test_a_tampered_blob_in_the_registry_is_refused(project: Project, oci_registry: DockerRegistry,
                                                    tmp_path: Path) -> None:
    lay = _layout(project)
    target = f"{oci_registry.host}/models/tampered:1"
    push(lay.root, "model", target)
    doc = _manifest(lay, "model")
    layer = next(d for d in doc["layers"] if d["annotations"][media.FILEPATH] == "thresholds.json")
    blob = oci_registry.blob_file(layer["digest"])
    data = bytearray(blob.read_bytes())
    data[0] ^= 1  # same size, one bit off
    blob.write_bytes(bytes(data))
    env = {"MODEL_BACKEND": "pytorch", "REGISTRY_RUNTIME_DIR": str(tmp_path / "rt"),
           "MODEL_BUNDLE_OCI_REF": target}
    with pytest.raises(PublishError, match="tampered"):
        bootstrap(env)
    assert not (tmp_path / "rt" / "pytorch" / "current").exists()


@pytest.mark.docker
def test_dockerfile_builds_with_an_engine(project: Project) -> None:
    docker = pytest.importorskip("docker", reason="the docker SDK (`docker` extra) is not installed")
    try:
        docker.from_env().ping()
    except Exception as exc:
        pytest.skip(f"no Docker engine answers here ({type(exc).__name__})")
    from modelkiln.stages.image import docker_build

    assert docker_build(_layout(project).root, "modelkiln-test:tiny")
    shutil.rmtree(project.root / "unused", ignore_errors=True)
