"""The serving image in a real container engine: it starts, answers `predict` as the build does,
refuses bad input with one line, detects a tampered layer, and a thresholds edit rebuilds
neither the environment layer nor the weights.

Real parts only: dockerd (started by .ci/run, DOCKER_HOST), a Debian bookworm base with python3
made by mmdebstrap from Debian's packages and pushed to the test docker-registry, the example
ONNX model built by the real `doit`, wheels resolved by pip from the package registry.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from enginehost import docker_cli, run_cli
from helpers import SPEC, Project, make_project
from modelkiln.artifacts.oci.layout import OciLayout
from modelkiln.artifacts.oci.media import Descriptor
from modelkiln.paths import Layout
from ociregistry import DockerRegistry

pytestmark = [pytest.mark.slow, pytest.mark.oci, pytest.mark.docker]

ONNX_SPEC = SPEC + """\
  onnx:
    quantize: {{mode: dynamic, weight_type: int8, per_channel: true}}
    parity: {{atol: 1.0e-4, max_decision_flip_rate: 0.1}}
"""
IMAGE = """\
image:
  repository: {host}/models/tiny-serving
  base: {base}
  backend: onnx
  test: required
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, onnx_inputs: Path,
           oci_registry: DockerRegistry, debian_base: str, engine: Any) -> Project:
    spec = ONNX_SPEC + IMAGE.replace("{host}", oci_registry.host).replace("{base}", debian_base)
    p = make_project(tmp_path_factory.mktemp("serving"), onnx_inputs, spec=spec)
    locked = p.kiln("image-lock")
    assert locked.returncode == 0, locked.stderr
    BUILT_FROM[:] = _runtime_source()
    run = p.doit("build:tiny", timeout=1800)
    assert run.code == 0, run.output
    assert {"image:tiny-onnx", "imagetest:tiny-onnx"} <= run.executed
    return p


BUILT_FROM: list[bytes] = []  # modelkiln's runtime files as the first build read them


def _layout(p: Project) -> OciLayout:
    return OciLayout(p.root / "dist/tiny/1.0.0/oci/onnx")


def _report(p: Project) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(
        Layout(p.root).stamp("tiny", "imagetest-onnx").read_text())["report"]
    return report


def _rows(p: Project, n: int = 40) -> bytes:
    rows = (p.root / "bundles/tiny/calibration.jsonl").read_text().splitlines()[:n]
    return "".join(json.dumps({"text": json.loads(r)["text"]}) + "\n" for r in rows).encode()


def _runtime_source() -> list[bytes]:
    from modelkiln.stages.image import runtime_files

    return [p.read_bytes() for p in runtime_files()]


def _image_id(p: Project, engine: Any) -> str:
    from modelkiln.stages.engine import load

    return load(engine, _layout(p).root, "image", "modelkiln-test/tiny:serving")


def test_the_gate_ran_the_image_that_was_built(served: Project) -> None:
    report = _report(served)
    assert report["image_digest"] == _layout(served).find("image").digest
    assert report["decisions_differ"] == 0 and report["max_abs_score_diff"] <= report["atol"]
    assert report["rows"] > 100 and report["startup_to_first_answer_s"] > 0
    # nothing publishes the PyTorch backend's layout (no publish.oci): it is not built
    assert not (served.root / "dist/tiny/1.0.0/oci/pytorch").exists()


def test_docker_run_predict_answers_as_the_host_does(served: Project, engine: Any) -> None:
    if docker_cli() is None:
        pytest.skip("no docker CLI")  # the SDK path is covered by the gate itself
    image = _image_id(served, engine)
    done = run_cli("run", "--rm", "-i", "--network", "none", "--pull", "never", image,
                   "predict", stdin=_rows(served))
    assert done.returncode == 0, done.stderr
    from modelkiln.stages.imagetest import compare, on_host

    lines = _rows(served).decode().splitlines()
    expected, _ = on_host(served.dist("onnx"), lines)
    got = [json.loads(x) for x in done.stdout.decode().splitlines()]
    differ, worst = compare(expected, got, 1e-6)
    assert (differ, len(got)) == (0, len(lines)) and worst <= 1e-6


def test_a_malformed_line_gets_one_error_line(served: Project, engine: Any) -> None:
    from modelkiln.stages import engine as eng

    ran = eng.run(engine, _image_id(served, engine), ["predict"],
                  b'{"text": "left scope"}\nnot json\n')
    assert ran.status == 1
    out = [json.loads(x) for x in ran.stdout.splitlines()]
    assert "labels" in out[0] and out[1]["error"].startswith("line 2: not JSON")
    assert ran.stderr.strip().count("\n") == 0 and "Traceback" not in ran.stderr


def test_a_tampered_thresholds_layer_fails_full_verification(served: Project,
                                                              engine: Any) -> None:
    """Someone patched thresholds.json in a layer on top: REGISTRY_VERIFY=full exits 2."""
    from modelkiln.stages import engine as eng

    image = _image_id(served, engine)
    container = engine.containers.create(
        image, entrypoint=["sh", "-c", 'echo \'{"alpha": 0.01}\' > /opt/model/thresholds.json'],
        network_mode="none")
    try:
        container.start()
        assert container.wait(timeout=120)["StatusCode"] == 0
        tampered = container.commit(repository="modelkiln-test/tampered", tag="1",
                                    changes=['ENTRYPOINT ["/opt/modelkiln/entrypoint.sh"]'])
    finally:
        container.remove(force=True)
    ok = eng.run(engine, image, ["true"], b"", environment={"REGISTRY_VERIFY": "full"})
    assert ok.status == 0, ok.stderr
    bad = eng.run(engine, tampered.id, ["predict"], b'{"text": "x"}\n',
                  environment={"REGISTRY_VERIFY": "full"})
    assert bad.status == 2 and "thresholds.json" in bad.stderr and not bad.stdout


def test_a_thresholds_edit_rebuilds_neither_environment_nor_weights(served: Project) -> None:
    lay = _layout(served)
    before = json.loads(lay.read_blob(lay.find("image")))
    envs = served.root / ".kiln/oci-cache/envs.json"
    known = json.loads(envs.read_text())
    served.edit("  default: 0.5\n", "  default: 0.5\n  values: {alpha: 0.37}\n")
    run = served.doit("build:tiny", timeout=1800)
    assert run.code == 0, run.output
    assert {"image:tiny-onnx", "imagetest:tiny-onnx"} <= run.executed  # the new digest is gated
    changed = _changed_layers(lay, before)
    assert changed == ["modelkiln: thresholds, model card and bundle manifest"], changed
    assert json.loads(envs.read_text()) == known  # no environment was built again
    assert _report(served)["image_digest"] == lay.find("image").digest


def _changed_layers(lay: OciLayout, before: dict[str, Any]) -> list[str]:
    after = json.loads(lay.read_blob(lay.find("image")))
    config = json.loads(lay.read_blob(Descriptor.from_json(after["config"], "config")))
    names = [h["created_by"] for h in config["history"]]  # one entry per layer
    old, new = [d["digest"] for d in before["layers"]], [d["digest"] for d in after["layers"]]
    changed = [names[i] for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
    if _runtime_source() != BUILT_FROM:  # modelkiln's files were edited meanwhile (a dev tree)
        changed = [c for c in changed if c != "modelkiln: modelkiln runtime and entrypoint"]
    return changed


def test_a_lock_change_rebuilds_only_the_environment_layer(served: Project) -> None:
    lay = _layout(served)
    before = json.loads(lay.read_blob(lay.find("image")))
    served.edit("  test: required\n", "  test: required\n  packages: [six]\n")
    stale = served.doit("build:tiny", timeout=1800)
    assert stale.code != 0 and "kiln image-lock tiny" in stale.output  # the lock lags the spec
    locked = served.kiln("image-lock")
    assert locked.returncode == 0, locked.stderr
    assert "\nsix==" in (served.root / "bundles/tiny.image.lock").read_text()
    run = served.doit("build:tiny", timeout=1800)
    assert run.code == 0, run.output
    assert run.executed == {"image:tiny-onnx", "imagetest:tiny-onnx"}, run.executed
    assert _changed_layers(lay, before) == ["modelkiln: serving environment (image lock)"]
    assert _report(served)["image_digest"] == lay.find("image").digest

def test_publish_sends_only_the_image_that_passed(served: Project,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    done = served.kiln("publish")
    assert done.returncode == 0, done.stderr
    assert "oci image: oci:" in done.stdout  # recorded (the spec does not push it)
    # Rebuilt where no engine answers: the image changes, its gate is skipped, the pass is stale.
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/engine.sock")
    served.edit("  test: required\n", "  test: auto\n")
    served.edit('version: "1.0.0"', 'version: "1.0.1"')
    plan = served.kiln("plan")
    assert "skip imagetest:tiny-onnx (no container engine" in plan.stdout, plan.stdout
    run = served.doit("build:tiny", timeout=1800)
    assert run.code == 0 and "image:tiny-onnx" in run.executed, run.output
    refused = served.kiln("publish")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "has not passed imagetest" in refused.stderr and "a layer changed since" in \
        refused.stderr and "Traceback" not in refused.stderr
    # A damaged pass is no pass; no pass at all (never tested here, test: auto) publishes.
    stamp = Layout(served.root).stamp("tiny", "imagetest-onnx")
    stamp.write_text("{")
    damaged = served.kiln("publish")
    assert damaged.returncode == 1 and "has not passed imagetest" in damaged.stderr
    stamp.unlink()
    untested = served.kiln("publish")
    assert untested.returncode == 0, untested.stderr
