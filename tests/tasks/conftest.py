"""Tiny seeded models of the other task kinds, built once per session by the real `doit`."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import Project, make_project
from tasks.task_specs import ANALYST_SPEC, MEMORY_SPEC, TAGGER_SPEC, VISION_SPEC


@pytest.fixture(scope="session")
def memory_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded tiny sentence encoder saved as sentence-transformers saves one (mean pooling,
    normalized), and 60 calibration texts."""
    from modelkiln import demo_fleet

    directory = tmp_path_factory.mktemp("memory-inputs")
    texts = demo_fleet.make_embedding_checkpoint(directory / "checkpoint", steps=40)
    demo_fleet.write_texts(directory / "calibration.jsonl", texts[:60])
    return directory


@pytest.fixture(scope="session")
def memory_built(tmp_path_factory: pytest.TempPathFactory, memory_inputs: Path) -> Project:
    root = tmp_path_factory.mktemp("memory-proj")
    project = make_project(root, memory_inputs, name="memory", spec=MEMORY_SPEC)
    done = project.doit("build:memory")
    assert done.code == 0, done.output
    return project


@pytest.fixture(scope="session")
def vision_built(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A seeded tiny ViT colour classifier, its image processor, 40 calibration PNGs, built."""
    from modelkiln import demo_fleet

    inputs = tmp_path_factory.mktemp("vision-inputs")
    held_out = demo_fleet.make_vision_checkpoint(inputs / "checkpoint", steps=20)
    demo_fleet.write_label_files(inputs, demo_fleet.VISION_LABELS)
    demo_fleet.write_images(inputs / "images", held_out[:40], inputs / "calibration.jsonl")
    project = make_project(tmp_path_factory.mktemp("vision-proj"), inputs, name="vision",
                           spec=VISION_SPEC)
    done = project.doit("build:vision")
    assert done.code == 0, done.output
    return project


@pytest.fixture(scope="session")
def analyst_built(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A seeded tiny Llama-style decoder in four safetensors shards, built."""
    import json

    from modelkiln import demo_fleet

    inputs = tmp_path_factory.mktemp("analyst-inputs")
    prompts = demo_fleet.make_generation_checkpoint(inputs / "checkpoint", steps=30)
    (inputs / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n"
                                                  for p in prompts[:16]))
    project = make_project(tmp_path_factory.mktemp("analyst-proj"), inputs, name="analyst",
                           spec=ANALYST_SPEC)
    done = project.doit("build:analyst")
    assert done.code == 0, done.output
    return project


@pytest.fixture(scope="session")
def tagger_built(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A seeded tiny BERT BIO tagger (procedures, drugs) and 40 calibration texts, built."""
    import json

    from modelkiln import demo_fleet

    inputs = tmp_path_factory.mktemp("tagger-inputs")
    texts = demo_fleet.make_ner_checkpoint(inputs / "checkpoint")
    demo_fleet.write_texts(inputs / "calibration.jsonl", texts[:40])
    (inputs / "label_order.json").write_text(json.dumps(list(demo_fleet.NER_LABELS)))
    (inputs / "registry_label_fields.json").write_text(json.dumps(
        {lab: {"entity": lab[2:] or "none"} for lab in demo_fleet.NER_LABELS}))
    project = make_project(tmp_path_factory.mktemp("tagger-proj"), inputs, name="tagger",
                           spec=TAGGER_SPEC)
    done = project.doit("build:tagger")
    assert done.code == 0, done.output
    return project
