"""Proof by example (issue 21): a third-party package adds a backend with a stage of its own and a
URL scheme, through the entry-point groups modelkiln's own use, without any edit to modelkiln.

tests/plugins/toy/ (its own pyproject) is copied to a temporary directory and pip-installed into
this venv (`--no-deps --no-build-isolation`: setuptools from the venv, no index); it is uninstalled
at teardown. Then, with real `kiln` and `doit` on a real tiny model: `kiln plugins` lists it by
package (its broken entry as one line), `kiln plan` shows its task, `doit build` runs it and packs
the toy bundle, and `kiln publish --to toymem://...` publishes through its transport.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import BIN, SPEC, Project, make_project
from modelkiln.artifacts.oci import media
from modelkiln.artifacts.oci.layout import OciLayout
from ociregistry import DockerRegistry

HERE = Path(__file__).parent
SRC = HERE.parents[1] / "src" / "modelkiln"


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "-q", "--no-input",
                           "--disable-pip-version-check"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def toy_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """kiln-toy installed into this venv for the module's tests (and removed after them)."""
    where = tmp_path_factory.mktemp("toy") / "kiln-toy"
    shutil.copytree(HERE / "toy", where, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info",
                                                                       "build"))
    _pip("install", "--no-deps", "--no-build-isolation", str(where))
    try:
        yield where
    finally:
        _pip("uninstall", "-y", "kiln-toy")


@pytest.fixture(scope="module")
def project(toy_installed: Path, tmp_path_factory: pytest.TempPathFactory,
            tiny_inputs: Path) -> Project:
    spec = SPEC.replace("  pytorch: {{}}\n", "  pytorch: {{}}\n  toy: {{greeting: hi}}\n")
    return make_project(tmp_path_factory.mktemp("toyproj") / "proj", tiny_inputs, spec=spec)


def run(project: Project, tool: str, *args: str,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(BIN / tool), *args], cwd=project.root, capture_output=True,
                          text=True, timeout=900,
                          env={**os.environ, "KILN_CACHE_URI": "off", **(env or {})})
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done


def test_nothing_in_modelkiln_names_the_plugin() -> None:
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "toystamp" not in text and "toymem" not in text and "kiln_toy" not in text, path


def test_kiln_plugins_lists_it_by_package_and_its_broken_entry_in_one_line(
        project: Project) -> None:
    done = run(project, "kiln", "plugins", "--json")
    assert done.returncode == 1  # one entry of kiln-toy cannot load
    rows = {(r["kind"], r["name"]): r for r in json.loads(done.stdout)}
    for key in (("backend", "toy"), ("stage", "toystamp"), ("transport", "toymem")):
        assert rows[key]["package"] == "kiln-toy" and rows[key]["version"] == "0.1.0"
        assert rows[key]["ok"], rows[key]
    broken = rows[("stage", "toybroken")]
    assert not broken["ok"] and "ModuleNotFoundError" in broken["problem"]
    assert rows[("stage", "weights")]["package"] == "modelkiln"
    assert rows[("transport", "s3")]["ok"] and rows[("backend", "onnx")]["ok"]
    table = run(project, "kiln", "plugins").stdout
    assert "kiln-toy 0.1.0" in table and "BROKEN: cannot load kiln_toy.missing" in table


def test_plan_shows_its_task_and_doit_build_runs_it(project: Project) -> None:
    done = run(project, "kiln", "plan", "--json")
    assert done.returncode == 0, done.stderr
    # the broken entry of kiln-toy is one warning line naming its package; planning goes on
    warnings = [line for line in done.stderr.splitlines() if "toybroken" in line]
    assert len(warnings) == 1 and "from kiln-toy 0.1.0" in warnings[0], done.stderr
    tasks = {t["task"]: t for t in json.loads(done.stdout)}
    assert tasks["toystamp:tiny"]["action"] == "run"
    assert tasks["package:tiny-toy"]["action"] == "run"
    built = project.doit("build:tiny", timeout=900)
    assert built.code == 0, built.output
    assert {"toystamp:tiny", "package:tiny-toy"} <= built.executed
    stamp = project.root / "build" / "tiny" / "toystamp" / "toy.txt"
    labels = json.loads((project.inputs / "label_order.json").read_text())
    assert stamp.read_text() == f"hi tiny: {len(labels)} labels\n"
    with tarfile.open(project.dist("toy") / "bundle.tar.gz") as tar:
        assert {"toy.txt", "model.safetensors", "thresholds.json"} <= set(tar.getnames())
    manifest = json.loads((project.dist("toy") / "manifest.json").read_text())
    assert manifest["backend"] == "toy" and "kiln-toy" in manifest["tools"]
    again = project.doit("build:tiny")
    assert again.code == 0 and not again.executed, again.output  # up to date, like any stage
    # its spec section is its params: an edit reruns its stage and its package only
    project.edit("greeting: hi", "greeting: hey")
    edited = project.doit("build:tiny")
    assert edited.code == 0 and edited.executed == {"toystamp:tiny", "package:tiny-toy"}, \
        edited.output


def test_publish_to_its_scheme(project: Project, tmp_path: Path) -> None:
    built = project.doit("build:tiny", timeout=900)
    assert built.code == 0, built.output
    mem = tmp_path / "toymem"
    env = {"KILN_TOYMEM_DIR": str(mem)}
    done = run(project, "kiln", "publish", "--backend", "toy", "--to",
               "toymem://shelf/{name}/{version}/{backend}/", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    where = mem / "shelf" / "tiny" / "1.0.0" / "toy"
    manifest = json.loads((where / "manifest.json").read_text())
    assert manifest["backend"] == "toy"
    assert "toymem://shelf/tiny/1.0.0/toy/" in done.stdout + done.stderr
    # the same bytes again: a no-op, as for s3:// and file://
    again = run(project, "kiln", "publish", "--backend", "toy", "--to",
                "toymem://shelf/{name}/{version}/{backend}/", env=env)
    assert again.returncode == 0 and "unchanged" in again.stdout + again.stderr


def test_the_action_cache_on_its_scheme(project: Project, tmp_path: Path) -> None:
    """A plug-in scheme serves KILN_CACHE_URI too: a trusted build saves its records there, and a
    clean checkout restores its tasks from them (the toy stage's among them)."""
    env = {**os.environ, "KILN_TOYMEM_DIR": str(tmp_path / "toymem"),
           "KILN_CACHE_URI": "toymem://cache/ci", "KILN_CACHE_WRITE": "1"}
    shutil.rmtree(project.root / "build", ignore_errors=True)
    shutil.rmtree(project.root / "dist", ignore_errors=True)
    shutil.rmtree(project.root / ".kiln", ignore_errors=True)

    def doit() -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(BIN / "doit"), "build:tiny"], cwd=project.root, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr, \
            done.stdout + done.stderr
        return done

    saved = doit()
    assert "toystamp:tiny: saved to cache" in saved.stdout + saved.stderr
    assert (tmp_path / "toymem" / "cache" / "ci").is_dir()
    for kept in ("build", "dist", ".kiln"):
        shutil.rmtree(project.root / kept)
    restored = doit()
    out = restored.stdout + restored.stderr
    assert "toystamp:tiny: restored from cache" in out and "weights:tiny: restored from cache" in out
    assert (project.root / "build" / "tiny" / "toystamp" / "toy.txt").read_text().startswith("hey")


IMAGE = """\
image:
  repository: {host}/models/toy
  base: {base}
  backend: toy
  libraries: base     # the synthetic base stands in for one that carries them
  test: off
"""


@pytest.fixture(scope="module")
def imaged(toy_installed: Path, tmp_path_factory: pytest.TempPathFactory, tiny_inputs: Path,
           oci_registry: DockerRegistry, base_ref: str) -> Project:
    """The toy bundle built with a serving image for the toy backend."""
    spec = SPEC.replace("  pytorch: {{}}\n", "  pytorch: {{}}\n  toy: {{greeting: hi}}\n") \
        + IMAGE.replace("{host}", oci_registry.host).replace("{base}", base_ref)
    p = make_project(tmp_path_factory.mktemp("toyimage") / "proj", tiny_inputs, spec=spec)
    built = p.doit("build:tiny", timeout=900)
    assert built.code == 0, built.output
    assert {"toystamp:tiny", "package:tiny-toy", "image:tiny-toy"} <= built.executed
    return p


def _exports(project: Project, env: dict[str, str]) -> dict[str, str]:
    done = run(project, "kiln", "bootstrap", "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    exports: dict[str, str] = json.loads(done.stdout)["exports"]
    return exports


def test_the_backend_module_brings_its_file_variable_and_image_needs(
        imaged: Project, oci_registry: DockerRegistry, tmp_path: Path) -> None:
    """What modelkiln packs, exports and bakes for `toy` comes from kiln_toy/backend.py alone
    (src/modelkiln names none of it: test_nothing_in_modelkiln_names_the_plugin)."""
    stamp = "hi tiny: "
    # packed: its PACKS put toy.txt in its bundle; the card names MODEL_FILE and LIBRARY
    with tarfile.open(imaged.dist("toy") / "bundle.tar.gz") as tar:
        assert "toy.txt" in tar.getnames()
        card = tar.extractfile("model_card.md")
        assert card is not None
        text = card.read().decode()
    assert 'library_name: "kiln-toy"' in text and "| model file | toy.txt |" in text, text[:600]
    # the serving image: its environment points at the file (EXPORTS) and the checkpoint
    # (MODEL_DIR); the model artifact's config records its FORMAT
    lay = OciLayout(imaged.root / "dist" / "tiny" / "1.0.0" / "oci" / "toy")
    image = json.loads(lay.read_blob(lay.find("image")))
    env = dict(e.split("=", 1) for e in json.loads(lay.read_blob(media.Descriptor(
        image["config"]["mediaType"], image["config"]["digest"], image["config"]["size"])))
        ["config"]["Env"])
    assert env["REGISTRY_TOY_STAMP_PATH"] == "/opt/model/toy.txt", env
    assert env["REGISTRY_MODEL_DIR"] == "/opt/model" and env["MODEL_BACKEND"] == "toy"
    model = json.loads(lay.read_blob(lay.find("model")))
    config = json.loads(lay.read_blob(media.Descriptor(
        model["config"]["mediaType"], model["config"]["digest"], model["config"]["size"])))
    assert config["config"]["format"] == "toystamp"
    # the runtime: `kiln bootstrap` exports its variable (URI_ENV in, EXPORTS out), from a
    # tarball and from an OCI artifact alike
    shelf = tmp_path / "shelf"
    done = run(imaged, "kiln", "publish", "--backend", "toy", "--to",
               f"file://{shelf}/{{name}}/{{version}}/{{backend}}/")
    assert done.returncode == 0, done.stdout + done.stderr
    got = _exports(imaged, {"MODEL_BACKEND": "toy", "REGISTRY_RUNTIME_DIR": str(tmp_path / "rt1"),
                            "MODEL_BUNDLE_S3_URI_TOY": f"file://{shelf}/tiny/1.0.0/toy/"})
    assert Path(got["REGISTRY_TOY_STAMP_PATH"]).read_text().startswith(stamp), got
    assert (Path(got["REGISTRY_MODEL_DIR"]) / "config.json").is_file()
    ref = f"{oci_registry.host}/models/toy-model:1.0.0-toy"
    done = run(imaged, "kiln", "publish", "--backend", "toy", "--to", f"oci://{ref}")
    assert done.returncode == 0, done.stdout + done.stderr
    got = _exports(imaged, {"MODEL_BACKEND": "toy", "REGISTRY_RUNTIME_DIR": str(tmp_path / "rt2"),
                            "MODEL_BUNDLE_OCI_REF_TOY": ref})
    assert Path(got["REGISTRY_TOY_STAMP_PATH"]).read_text().startswith(stamp), got
    # the image's needs: its IMAGE_PACKAGES, at this build's versions, are what the image's
    # environment lock must hold (a lock resolved for something else is refused, naming them)
    imaged.edit("libraries: base", "libraries: lock")
    (imaged.root / "bundles" / "tiny.image.lock").write_text("# resolved for something else\n")
    refused = imaged.doit("image:tiny-toy")
    assert refused.code != 0
    asked = refused.output.split("resolved for other requirements than the spec asks (", 1)[1]
    assert "kiln-toy==0.1.0" in asked and "transformers==" in asked, refused.output


def test_a_backend_built_from_another_goes_when_that_one_is_skipped(project: Project) -> None:
    """Its NEEDS (pytorch): `--skip pytorch` leaves it out too, as `--skip onnx` does tensorrt."""
    done = run(project, "kiln", "plan", "--json", "--skip", "pytorch")
    assert done.returncode == 0, done.stderr
    tasks = {t["task"] for t in json.loads(done.stdout)}
    assert "toystamp:tiny" not in tasks and "package:tiny-toy" not in tasks, tasks
    assert "package:tiny-pytorch" not in tasks and "weights:tiny" in tasks
    kept = {t["task"] for t in json.loads(run(project, "kiln", "plan", "--json").stdout)}
    assert {"toystamp:tiny", "package:tiny-toy"} <= kept
    # enabled without what it is built from: a spec error at its key, as tensorrt without onnx
    spec = project.spec.read_text()
    project.edit("  pytorch: {}\n", "  pytorch: {enabled: false}\n")
    try:
        done = run(project, "kiln", "validate")
    finally:
        project.spec.write_text(spec)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "backends.toy: the toy backend is built from the pytorch backend's model" \
        in done.stderr, done.stderr
    # its enabled(section) decides whether a section turns it on (here `greeting: ""` is off)
    project.edit("greeting: hey" if "greeting: hey" in spec else "greeting: hi", 'greeting: ""')
    try:
        off = {t["task"] for t in json.loads(run(project, "kiln", "plan", "--json").stdout)}
    finally:
        project.spec.write_text(spec)
    assert "toystamp:tiny" not in off and "package:tiny-pytorch" in off, off
