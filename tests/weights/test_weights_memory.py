"""The weights stage's memory does not grow with the checkpoint: a sharded BERT-shaped classifier
of about 300 MiB peaks within a small constant of one of 7 MiB.

Peak RSS comes from getrusage(RUSAGE_CHILDREN) in a small parent process that runs the real
`doit weights:tiny` (shard_helpers.peak_rss), so nothing this test process did counts. Both runs
pay the same torch + transformers import (about 320 MiB here); what is asserted is the growth.
A memory bound, not a timing assertion. Before shards stayed sharded, the stage loaded the whole
state dict, saved it again and loaded the model: about three times the checkpoint on top.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import BIN, make_project
from weights.shard_helpers import big_project_inputs, peak_rss

pytestmark = pytest.mark.slow

MiB = 1 << 20
GROWTH = 64 * MiB  # what the larger checkpoint may add to the peak: buffers, headers, not weights


def _peak(tmp: Path, name: str, hidden: int, layers: int) -> tuple[int, int]:
    """(weights bytes, peak RSS of `doit weights:tiny`) for a 4-shard checkpoint of that shape."""
    size = big_project_inputs(tmp / f"{name}-inputs", hidden=hidden, layers=layers, shards=4)
    project = make_project(tmp / name, tmp / f"{name}-inputs")
    code, peak, output = peak_rss([str(BIN / "doit"), "weights:tiny"], project.root)
    assert code == 0, output
    assert "4 safetensors shards kept sharded" in output
    return size, peak


def test_peak_rss_of_the_weights_stage_does_not_follow_the_checkpoint(tmp_path: Path) -> None:
    small_size, small_peak = _peak(tmp_path, "small", hidden=64, layers=2)
    big_size, big_peak = _peak(tmp_path, "big", hidden=768, layers=8)
    assert big_size > 250 * MiB and small_size < 16 * MiB
    assert big_peak - small_peak < GROWTH, (
        f"peak RSS {small_peak / MiB:.0f} MiB at {small_size / MiB:.0f} MiB of weights, "
        f"{big_peak / MiB:.0f} MiB at {big_size / MiB:.0f} MiB")
