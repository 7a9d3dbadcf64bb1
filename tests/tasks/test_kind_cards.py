"""A task kind's own model card opens with the same Hugging Face front matter as the classifiers'
(stages/package.py prepends it where the kind's card has none), with the kind's pipeline tag."""
from __future__ import annotations

import json
import tarfile

import pytest

from helpers import Project

pytestmark = pytest.mark.slow


def test_embedding_card_has_front_matter(memory_built: Project) -> None:
    with tarfile.open(memory_built.dist("onnx") / "bundle.tar.gz") as tar:
        member = tar.extractfile("model_card.md")
        assert member is not None
        card = member.read().decode()
    assert card.startswith("---\n"), card[:200]
    block = card.split("---\n", 2)[1]
    fields = dict(line.split(": ", 1) for line in block.strip().splitlines())
    assert json.loads(fields["pipeline_tag"]) == "feature-extraction"
    assert json.loads(fields["library_name"]) == "onnx"
    assert "feature-extraction" in json.loads(fields["tags"])
    assert card.split("---\n", 2)[2].lstrip().startswith("#"), "the kind's own card follows"
