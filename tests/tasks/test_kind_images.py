"""Serving images of the other task kinds: a `memory` embedding model, a `tagger` NER model, a
`vision` image classifier and an `analyst` decoder LLM each build a real image with `doit`, the
container's `predict` answers per task (a vector, entities, image labels, generated tokens),
`imagetest` passes on the kind's calibration rows (the vision rows' image files bound read-only
into the container), and the kind's comparison fails on a deliberately wrong expectation (a
mutated vector, a relabelled entity, a flipped label, another token).

Real parts only: the container engine at DOCKER_HOST, the Debian base (KILN_TEST_BASE_TAR)
pushed to the test docker-registry, wheels resolved by pip, one image build per kind.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import Project, make_project
from modelkiln.paths import Layout
from ociregistry import DockerRegistry
from tasks.task_specs import ANALYST_SPEC, MEMORY_SPEC, TAGGER_SPEC, VISION_SPEC

pytestmark = [pytest.mark.slow, pytest.mark.oci, pytest.mark.docker]

IMAGE = """\
image:
  repository: {host}/models/{name}-serving
  base: {base}
  backend: onnx
  test: required
"""


def _imaged(root: Path, inputs: Path, name: str, spec: str, host: str, base: str) -> Project:
    image = IMAGE.replace("{host}", host).replace("{base}", base)
    p = make_project(root, inputs, name=name, spec=spec + image)
    locked = p.kiln("image-lock")
    assert locked.returncode == 0, locked.stderr
    run = p.doit(f"build:{name}", timeout=1800)
    assert run.code == 0, run.output
    assert {f"image:{name}-onnx", f"imagetest:{name}-onnx"} <= run.executed, run.output
    return p


@pytest.fixture(scope="module")
def memory_image(tmp_path_factory: pytest.TempPathFactory, memory_inputs: Path,
                 oci_registry: DockerRegistry, debian_base: str, engine: Any) -> Project:
    return _imaged(tmp_path_factory.mktemp("memory-image"), memory_inputs, "memory",
                   MEMORY_SPEC, oci_registry.host, debian_base)


@pytest.fixture(scope="module")
def tagger_image(tmp_path_factory: pytest.TempPathFactory, oci_registry: DockerRegistry,
                 debian_base: str, engine: Any) -> Project:
    from modelkiln import demo_fleet

    inputs = tmp_path_factory.mktemp("tagger-image-inputs")
    texts = demo_fleet.make_ner_checkpoint(inputs / "checkpoint")
    demo_fleet.write_texts(inputs / "calibration.jsonl", texts[:40])
    (inputs / "label_order.json").write_text(json.dumps(list(demo_fleet.NER_LABELS)))
    (inputs / "registry_label_fields.json").write_text(json.dumps(
        {lab: {"entity": lab[2:] or "none"} for lab in demo_fleet.NER_LABELS}))
    return _imaged(tmp_path_factory.mktemp("tagger-image"), inputs, "tagger", TAGGER_SPEC,
                   oci_registry.host, debian_base)


@pytest.fixture(scope="module")
def vision_image(tmp_path_factory: pytest.TempPathFactory, oci_registry: DockerRegistry,
                 debian_base: str, engine: Any) -> Project:
    from modelkiln import demo_fleet

    inputs = tmp_path_factory.mktemp("vision-image-inputs")
    held_out = demo_fleet.make_vision_checkpoint(inputs / "checkpoint", steps=20)
    demo_fleet.write_label_files(inputs, demo_fleet.VISION_LABELS)
    demo_fleet.write_images(inputs / "images", held_out[:20], inputs / "calibration.jsonl")
    return _imaged(tmp_path_factory.mktemp("vision-image"), inputs, "vision", VISION_SPEC,
                   oci_registry.host, debian_base)


@pytest.fixture(scope="module")
def analyst_image(tmp_path_factory: pytest.TempPathFactory, oci_registry: DockerRegistry,
                  debian_base: str, engine: Any) -> Project:
    from modelkiln import demo_fleet

    inputs = tmp_path_factory.mktemp("analyst-image-inputs")
    prompts = demo_fleet.make_generation_checkpoint(inputs / "checkpoint", steps=30)
    (inputs / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n"
                                                  for p in prompts[:8]))
    return _imaged(tmp_path_factory.mktemp("analyst-image"), inputs, "analyst", ANALYST_SPEC,
                   oci_registry.host, debian_base)


def _report(p: Project) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(
        Layout(p.root).stamp(p.name, "imagetest-onnx").read_text())["report"]
    return report


def _answers(p: Project, engine: Any, lines: list[str], host_lines: list[str] | None = None,
             mounts: dict[str, str] | None = None) -> tuple[list[dict[str, Any]],
                                                            list[dict[str, Any]]]:
    """(the host's answers, the container's answers) to `lines` through predict."""
    from modelkiln.stages import engine as eng
    from modelkiln.stages.imagetest import on_host

    expected, _ = on_host(p.dist("onnx"), host_lines or lines)
    image = eng.load(engine, p.root / f"dist/{p.name}/1.0.0/oci/onnx", "image",
                     f"modelkiln-test/{p.name}:kind")
    ran = eng.run(engine, image, ["predict"], ("\n".join(lines) + "\n").encode(),
                  mounts=mounts)
    assert ran.status == 0, ran.stderr
    return expected, [json.loads(x) for x in ran.stdout.splitlines()]


def _texts(p: Project, n: int) -> list[str]:
    rows = (p.inputs / "calibration.jsonl").read_text().splitlines()[:n]
    return [json.dumps({"text": json.loads(r)["text"]}) for r in rows]


def test_memory_image_answers_vectors_and_passes_its_gate(memory_image: Project,
                                                          engine: Any) -> None:
    from modelkiln.stages.imagetest_kinds import compare

    report = _report(memory_image)
    assert report["rows"] == 60 and report["decisions_differ"] == 0
    assert report["max_abs_score_diff"] <= report["atol"]
    dimension = json.loads((memory_image.dist("onnx") / "manifest.json").read_text())[
        "signature"]["embedding"]["dimension"]
    expected, got = _answers(memory_image, engine, _texts(memory_image, 5))
    assert [len(g["embedding"]) for g in got] == [dimension] * 5
    differ, worst = compare("feature-extraction", expected, got, 1e-6)
    assert differ == 0 and worst <= 1e-6
    # deliberately wrong expectations, one at a time: each fails the comparison
    def mutated(row: int, vector: list[float]) -> tuple[int, float]:
        wrong = json.loads(json.dumps(expected))
        wrong[row]["embedding"] = vector
        return compare("feature-extraction", wrong, got, 1e-4)

    moved = [float(x) for x in expected[2]["embedding"]]
    moved[0] += 0.05
    assert mutated(2, moved)[1] >= 0.05 - 1e-6  # beyond the tolerance: the gate fails
    opposite = [-float(x) for x in expected[3]["embedding"]]
    assert mutated(3, opposite)[0] == 1  # cosine -1: a differing row
    assert mutated(4, expected[4]["embedding"][:-1])[0] == 1  # another dimension


def test_tagger_image_answers_entities_and_passes_its_gate(tagger_image: Project,
                                                           engine: Any) -> None:
    from modelkiln.stages.imagetest_kinds import compare

    report = _report(tagger_image)
    assert report["rows"] == 40 and report["decisions_differ"] == 0
    assert report["max_abs_score_diff"] <= report["atol"]
    expected, got = _answers(tagger_image, engine, _texts(tagger_image, 10))
    assert all(isinstance(g["entities"], list) for g in got)
    tagged = [i for i, g in enumerate(got) if g["entities"]]
    assert tagged, "the seeded tagger finds entities in its calibration texts"
    assert compare("token-classification", expected, got, 1e-6)[0] == 0
    # a deliberately wrong expectation: one entity relabelled is a differing row
    wrong = json.loads(json.dumps(expected))
    entity = wrong[tagged[0]]["entities"][0]
    entity["entity"] = "PROC" if entity["entity"] != "PROC" else "DRUG"
    assert compare("token-classification", wrong, got, 1e-6)[0] == 1


def test_vision_image_labels_bound_image_files_and_passes_its_gate(vision_image: Project,
                                                                   engine: Any) -> None:
    from modelkiln.api import load_bundles
    from modelkiln.stages.imagetest import compare
    from modelkiln.stages.imagetest_kinds import IMAGE_MOUNT, image_requests

    report = _report(vision_image)
    assert report["rows"] == 20 and report["decisions_differ"] == 0
    assert report["max_abs_score_diff"] <= report["atol"]
    bundle = load_bundles([vision_image.spec])[0]
    inside, host, mounts = image_requests(bundle, 8)
    # an image edited in place reruns the test: the files are among its inputs
    from modelkiln.stages import imagetest

    planned = imagetest.plan(bundle, Layout(vision_image.root))[0].inputs
    assert sum(path.suffix == ".png" for path in planned) == 20
    assert json.loads(inside[0])["image"].startswith(IMAGE_MOUNT + "/images/")
    expected, got = _answers(vision_image, engine, inside, host, mounts)
    assert all(set(g["scores"]) == set(expected[0]["scores"]) for g in got)
    differ, worst = compare(expected, got, 1e-4)
    assert differ == 0 and worst <= 1e-4
    # a deliberately wrong expectation: one image's labels flipped is a differing row
    wrong = json.loads(json.dumps(expected))
    wrong[0]["labels"] = [] if wrong[0]["labels"] else [next(iter(wrong[0]["scores"]))]
    assert compare(wrong, got, 1e-4)[0] == 1


def test_analyst_image_generates_the_hosts_tokens_and_passes_its_gate(analyst_image: Project,
                                                                      engine: Any) -> None:
    from modelkiln.stages.imagetest_kinds import compare

    report = _report(analyst_image)
    assert report["rows"] == 8 and report["decisions_differ"] == 0
    prompts = (analyst_image.inputs / "prompts.jsonl").read_text().splitlines()[:3]
    lines = [json.dumps({"prompt": json.loads(r)["prompt"], "max_new_tokens": 6})
             for r in prompts]
    expected, got = _answers(analyst_image, engine, lines)
    assert all(g["tokens"] and isinstance(g["text"], str) for g in got)
    assert compare("text-generation", expected, got, 1e-4) == (0, 0.0)
    wrong = json.loads(json.dumps(expected))
    wrong[1]["tokens"][-1] += 1  # another last token: a differing row
    assert compare("text-generation", wrong, got, 1e-4)[0] == 1


def test_a_generation_differing_by_one_token_fails_the_comparison() -> None:
    from modelkiln.stages.imagetest_kinds import compare

    want = [{"text": "a b", "tokens": [5, 6], "finish": "length"}]
    assert compare("text-generation", want, [dict(want[0])], 1e-4) == (0, 0.0)
    assert compare("text-generation", want,
                   [{"text": "a c", "tokens": [5, 7], "finish": "length"}], 1e-4)[0] == 1
