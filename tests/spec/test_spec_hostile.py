"""Specs that once broke the one-problem-one-line rule, hung `kiln validate`, or were refused
although valid."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import BIN
from modelkiln.errors import SpecError
from modelkiln.spec import load_document, load_documents
from spec.spec_helpers import BASE, Write, edit


def lines(*paths: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_documents(list(paths))
    text = str(info.value)
    assert text.count("\n") == len(info.value.problems)  # the head line, then one per problem
    assert len(text.splitlines()) == len(info.value.problems) + 1
    return [str(p) for p in info.value.problems]


def test_json_spec_with_surrogate_pair_escapes_is_accepted(write: Write) -> None:
    data = yaml.safe_load(BASE)
    data["description"] = "caf\u00e9 \U0001F600 \U0001F9EA"
    data["metadata"] = {"owner \U0001F600": "x"}
    text = json.dumps(data)  # ensure_ascii: the emoji become \ud83d\ude00
    assert "\\ud83d\\ude00" in text
    doc = load_document(write("b.yaml", text))
    assert doc.data["description"] == "caf\u00e9 \U0001F600 \U0001F9EA"
    assert doc.data["metadata"] == {"owner \U0001F600": "x"}
    assert doc.marks[("description",)] == (1, text.index('"caf') + 1)


def test_lone_surrogate_escape_is_a_problem(write: Write) -> None:
    path = write("b.yaml", edit('version: "3.0.0"', 'version: "3.0.0"\ndescription: "x\\ud83d y"'))
    assert lines(path) == ["b.yaml:5:14: description: escape of a lone UTF-16 surrogate "
                           "(\\ud800-\\udfff) is not text (write the character itself, or a valid pair)"]


def test_surrogate_text_outside_double_quotes_is_left_alone(write: Write) -> None:
    path = write("b.yaml", edit('version: "3.0.0"', "version: \"3.0.0\"\ndescription: 'a \\ud83d\\ude00'"))
    assert load_document(path).data["description"] == "a \\ud83d\\ude00"


@pytest.mark.parametrize("key", ["a\\nb", "a\\rb", "a\\x85b", "a\\u2028b", "a\\x1b[31mb"])
def test_line_breaks_in_keys_and_values_are_escaped(write: Write, key: str) -> None:
    text = edit("kind: Bundle", f'kind: "Bun{key}dle"') + f'"{key}": 1\n'
    found = lines(write("b.yaml", text))
    assert len(found) == 2
    assert found[0].startswith("b.yaml:2:7: kind: must be 'Bundle', got 'Bun")
    assert found[1].startswith("b.yaml:17:1: ")


def test_file_name_with_a_newline_stays_on_one_line(write: Write) -> None:
    found = lines(write("bad\nname.yaml", "kind: [\n"))
    assert found[0].startswith("bad\\nname.yaml:")


@pytest.mark.parametrize("make", ["fifo", "dev-zero", "directory"])
def test_kiln_validate_refuses_what_is_not_a_regular_file(tmp_path: Path, make: str) -> None:
    """Before, a FIFO waited for a writer forever and /dev/zero was read until memory ran out."""
    target = tmp_path / "s.yaml"
    if make == "fifo":
        os.mkfifo(target)
    elif make == "directory":
        target.mkdir()
    else:
        target = Path("/dev/zero")
    done = subprocess.run([str(BIN / "kiln"), "validate", str(target)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 if make != "directory" else done.returncode in (1, 3)
    assert "Traceback" not in done.stderr
    if make != "directory":  # a directory is searched for specs, and it holds none
        shown = "s.yaml" if make == "fifo" else "/dev/zero"
        assert done.stderr.splitlines()[1] == (f"{shown}:1:1: <document>: not a regular file (a device, "
                                               "FIFO, socket or directory) (name a .yaml spec file)")
