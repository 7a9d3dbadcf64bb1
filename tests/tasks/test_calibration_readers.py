"""Every kind's calibration reader goes through model.calibration.json_lines: a line too long is
refused after reading at most MAX_LINE + 1 bytes, a line that is not JSON is `file:line` as a
build error (not a JSONDecodeError traceback), and a FIFO is refused at once instead of blocking
the plan or the build until someone writes to it."""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from modelkiln.errors import BuildError
from modelkiln.model.calibration import MAX_LINE
from modelkiln.stages import embed_parity, gen_parity, imagetest_kinds, vision_parity

READERS: dict[str, Callable[[Path], object]] = {
    "embedding texts": lambda p: embed_parity.read_texts(p, None),
    "generation prompts": gen_parity.read_prompts,
    "serving-image rows": lambda p: imagetest_kinds._texts(p, ("text",), 10),
    "vision images": lambda p: vision_parity.read_images(p, ("cat", "dog"), None),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_line_that_is_not_json_names_its_line(tmp_path: Path, reader: str) -> None:
    path = tmp_path / "calibration.jsonl"
    path.write_text('{"text": "a", "prompt": "a", "image": "a.png", "labels": []}\n'
                    '{"text": oops}\n')
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(BuildError, match=r"calibration\.jsonl:2.*not valid JSON"):
        READERS[reader](path)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_line_too_long_is_refused_without_reading_it_whole(tmp_path: Path,
                                                              reader: str) -> None:
    path = tmp_path / "calibration.jsonl"
    path.write_bytes(b'{"text": "' + b"x" * (MAX_LINE + 10))  # no newline: one huge line
    with pytest.raises(BuildError, match=r"calibration\.jsonl:1: line longer than"):
        READERS[reader](path)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_fifo_is_refused_at_once(tmp_path: Path, reader: str) -> None:
    path = tmp_path / "calibration.jsonl"
    os.mkfifo(path)
    with pytest.raises(BuildError, match=r"calibration\.jsonl: not a regular file"):
        READERS[reader](path)


def test_the_plan_reads_image_names_up_to_a_bad_line_and_never_blocks(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    (tmp_path / "b.png").write_bytes(b"\x89PNG")
    path = tmp_path / "calibration.jsonl"
    path.write_text('{"image": "a.png", "labels": []}\nnot json\n{"image": "b.png"}\n')
    assert vision_parity.image_inputs(path, None) == (tmp_path / "a.png",)

    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    got: list[tuple[Path, ...]] = []
    reader = threading.Thread(target=lambda: got.append(vision_parity.image_inputs(fifo, None)),
                              daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), "image_inputs blocked on a FIFO"
    assert got == [()]
