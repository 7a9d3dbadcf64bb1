"""Every subcommand says what it does and shows an example; every option has a help line.

Walks the real parser, so a subcommand or option added later without them fails here (the CLI
conventions in the coordination rules). Also: the completion script is generated from the same
parser, and -q/-v work before and after the subcommand."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import BIN
from modelkiln import cli


def _subcommands(parser: argparse.ArgumentParser, path: str = "kiln"
                 ) -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out.append((f"{path} {name}", child))
                out += _subcommands(child, f"{path} {name}")
    return out


def test_the_walk_sees_every_subcommand() -> None:
    names = {path for path, _ in _subcommands(cli.build_parser())}
    for expected in ("kiln build", "kiln clean", "kiln completion", "kiln store prune",
                     "kiln registry select", "kiln verify-signature", "kiln bootstrap"):
        assert expected in names


@pytest.mark.parametrize("path,parser", _subcommands(cli.build_parser()),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_every_subcommand_has_a_description_and_an_example(path: str,
                                                           parser: argparse.ArgumentParser) -> None:
    assert parser.description and len(parser.description) > 20, f"{path}: no description="
    epilog = parser.epilog or ""
    assert "example" in epilog and "kiln " in epilog, f"{path}: no epilog= with an example"


@pytest.mark.parametrize("path,parser", [("kiln", cli.build_parser()),
                                         *_subcommands(cli.build_parser())],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_and_argument_has_help(path: str, parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{path} {name}: no help="


def test_option_defaults_are_in_their_help() -> None:
    """A default a user would otherwise have to guess is written in the help line."""
    text = subprocess.run([str(BIN / "kiln"), "store", "prune", "--help"], capture_output=True,
                          text=True, check=True).stdout
    assert "(default: 3)" in " ".join(text.split())
    text = subprocess.run([str(BIN / "kiln"), "bootstrap", "--help"], capture_output=True,
                          text=True, check=True).stdout
    assert "MODEL_BUNDLE_OCI_REF" in text


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_is_generated_from_the_parser(shell: str) -> None:
    done = subprocess.run([str(BIN / "kiln"), "completion", shell], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    for word in ("verify-signature", "--store-root", "--include-non-installed", "--force",
                 "completion"):
        assert word in done.stdout, word
    if shell == "bash":  # the script loads in bash and completes a subcommand
        script = done.stdout + '\nCOMP_WORDS=(kiln bui); COMP_CWORD=1; COMP_LINE="kiln bui"; ' \
            'COMP_POINT=${#COMP_LINE}; _shtab_kiln kiln bui kiln; echo "${COMPREPLY[@]}"\n'
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
        assert out.stdout.split() == ["build"], out.stdout + out.stderr


def test_quiet_and_verbose_before_and_after_the_subcommand(tmp_path: Path) -> None:
    (tmp_path / "model-store" / "agent-a" / "versions").mkdir(parents=True)
    env = {**os.environ, "MODEL_STORE_ROOT": str(tmp_path / "model-store")}

    def kiln(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "kiln"), *args], capture_output=True, text=True,
                              cwd=tmp_path, env=env)

    assert kiln("store", "list").stdout == "agent-a\n"
    for args in (("-q", "store", "list"), ("store", "list", "-q"), ("store", "-q", "list")):
        done = kiln(*args)
        assert (done.returncode, done.stdout) == (0, ""), (args, done.stderr)
    done = kiln("store", "list", "-q", "--json")  # machine output is what -q keeps
    assert json.loads(done.stdout) == ["agent-a"], done.stderr
    assert kiln("-v", "store", "list").returncode == 0
    done = kiln("store", "current", "nope", "-q")  # errors still say what went wrong
    assert done.returncode == 1 and "nope: no such agent" in done.stderr
