"""A stage's declared outputs decide which cached records are saved and restored (issue 21 item 3):
a name in WRITES is required, a WRITES pattern and anything in OPTIONAL is allowed, anything else
refuses the record. Engines' left_out.json and the image's Dockerfile are OPTIONAL, not spelled as
patterns in WRITES."""
from __future__ import annotations

from pathlib import Path

from modelkiln.cache import ActionRecord, BlobRef
from modelkiln.graph.plans import BUILTIN_STAGES
from modelkiln.graph.remote import undeclared
from modelkiln.stages.base import StagePlan


def plan(stage: str) -> StagePlan:
    return StagePlan(task=f"{stage}:x", stage=stage, bundle="x", doc="", out_dir=Path("/nowhere"),
                     stamp=Path("/nowhere/.stamp"), inputs=(), upstream=(), params="{}")


def record(stage: str, *paths: str) -> ActionRecord:
    return ActionRecord(key="ab" * 32, task=f"{stage}:x", stage=stage,
                        outputs=tuple(BlobRef(p, 1, "0" * 64) for p in sorted(paths)))


def test_every_stage_declares_its_optional_outputs_apart() -> None:
    for name, stage in BUILTIN_STAGES.items():
        assert isinstance(stage.OPTIONAL, tuple), name
        assert not any(set("[]") & set(w) for w in stage.WRITES or ()), name  # no [x] tricks
    assert BUILTIN_STAGES["engines"].OPTIONAL == ("left_out.json",)
    assert BUILTIN_STAGES["image"].OPTIONAL == ("Dockerfile",)


def test_optional_outputs_may_be_there_or_not() -> None:
    engines = ("engines/sm80/model.plan", "parity/sm80/engine.npy")
    assert undeclared(plan("engines"), record("engines", *engines)) is None
    assert undeclared(plan("engines"), record("engines", *engines, "left_out.json")) is None
    image = ("oci-layout", "index.json", "blobs/sha256/" + "a" * 64)
    assert undeclared(plan("image"), record("image", *image)) is None
    assert undeclared(plan("image"), record("image", *image, "Dockerfile")) is None


def test_required_outputs_must_be_there_and_nothing_else_may() -> None:
    assert undeclared(plan("image"), record("image", "oci-layout", "Dockerfile")) == \
        "'index.json' is missing"
    why = undeclared(plan("engines"), record("engines", "left_out.json", "notes.txt"))
    assert why is not None and "notes.txt" in why
