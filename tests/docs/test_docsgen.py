"""docs/reference/ is generated from the schemas and the parser, and the committed pages are current.

A change to a schema description or a CLI option without `python -m modelkiln.docsgen` fails here,
naming the command that fixes it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from modelkiln import docsgen
from modelkiln.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


@pytest.mark.parametrize("rel", sorted(docsgen.pages()))
def test_committed_reference_is_up_to_date(rel: str) -> None:
    committed = DOCS / rel
    assert committed.is_file(), f"docs/{rel} is missing: run `python -m modelkiln.docsgen`"
    assert committed.read_text() == docsgen.pages()[rel], (
        f"docs/{rel} is out of date: run `python -m modelkiln.docsgen` and commit the result")


def _keys(node: dict[str, object], path: str) -> list[str]:
    out = []
    props = node.get("properties", {})
    assert isinstance(props, dict)
    for name, child in props.items():
        out.append(f"{path}.{name}" if path else name)
        out += _keys(child, f"{path}.{name}" if path else name)
    return out


def test_spec_reference_names_every_key_with_its_description() -> None:
    schema = json.loads((REPO / "schema" / "bundle.schema.json").read_text())
    page = docsgen.pages()["reference/spec.md"]
    for key in _keys(schema, ""):
        assert f"| `{key}` |" in page, key
    assert "Who should use the model" in page  # card.intended_use's description


def test_cli_reference_names_every_command_and_option() -> None:
    page = docsgen.pages()["reference/cli.md"]
    parser = build_parser()
    stack = [parser]
    while stack:
        p = stack.pop()
        assert f"`{p.prog}`" in page, p.prog
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack += list(action.choices.values())
            elif action.option_strings and action.help != argparse.SUPPRESS \
                    and not isinstance(action, argparse._HelpAction):
                assert f"`{action.option_strings[0]}`" in page, (p.prog, action.option_strings)


def test_check_mode_finds_a_stale_page_and_rewriting_fixes_it(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert docsgen.main(["--docs", str(tmp_path)]) == 0
    assert docsgen.main(["--docs", str(tmp_path), "--check"]) == 0
    stale = tmp_path / "reference" / "cli.md"
    stale.write_text(stale.read_text().replace("kiln build", "kiln bild", 1))
    assert docsgen.main(["--docs", str(tmp_path), "--check"]) == 1
    assert "reference/cli.md" in capsys.readouterr().err
    assert docsgen.main(["--docs", str(tmp_path)]) == 0
    assert docsgen.main(["--docs", str(tmp_path), "--check"]) == 0


def test_output_does_not_depend_on_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    narrow = docsgen.cli_reference()
    monkeypatch.setenv("COLUMNS", "250")
    assert docsgen.cli_reference() == narrow
