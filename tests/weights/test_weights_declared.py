"""The weights stage's declared outputs admit both of its layouts, so the action cache saves and
restores a sharded build as it does a single-file one (graph.remote.undeclared decides)."""
from __future__ import annotations

from pathlib import Path

from modelkiln.cache import ActionRecord, BlobRef
from modelkiln.graph.remote import undeclared
from modelkiln.stages.base import StagePlan

SHARDS = tuple(f"model-0000{i}-of-00004.safetensors" for i in range(1, 5))


def _plan() -> StagePlan:
    return StagePlan(task="weights:x", stage="weights", bundle="x", doc="",
                     out_dir=Path("/nowhere"), stamp=Path("/nowhere/.stamp"), inputs=(),
                     upstream=(), params="{}")


def _record(*paths: str) -> ActionRecord:
    return ActionRecord(key="ab" * 32, task="weights:x", stage="weights",
                        outputs=tuple(BlobRef(p, 1, "0" * 64) for p in sorted(paths)))


def test_single_file_and_sharded_records_are_both_accepted() -> None:
    assert undeclared(_plan(), _record("config.json", "model.safetensors")) is None
    assert undeclared(_plan(), _record("config.json", *SHARDS,
                                       "model.safetensors.index.json")) is None
    assert undeclared(_plan(), _record("config.json", *SHARDS, "model.safetensors.index.json",
                                       "generation_config.json")) is None


def test_a_record_without_config_or_with_strays_is_refused() -> None:
    assert undeclared(_plan(), _record(*SHARDS)) == "'config.json' is missing"
    why = undeclared(_plan(), _record("config.json", "model.safetensors", "notes.txt"))
    assert why is not None and "notes.txt" in why
