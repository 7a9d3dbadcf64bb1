"""`kiln changed`, `kiln schema` and `kiln validate`'s CI forms: what a workflow, pre-commit and an
editor call.

Part of the CLI layer (it prints); cli.py registers these parsers and `validate`'s options.
`kiln validate --format github` prints each problem as a GitHub workflow command
(`::error file=F,line=L,col=C::key: message`), which GitHub shows as an annotation on that spec
line of the pull request; `--schema-only` checks YAML and the schema alone, reading no file a
spec names (pre-commit.ci and LFS-less clones have no checkpoints). `kiln changed` prints the
bundles a CI matrix must build as JSON on stdout (or, with `--shards N`, at most N legs) and the
base it compared with on stderr; `kiln schema` writes the bundle JSON Schema where an editor finds
it. The deciding is in graph/changed.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import api
from .errors import ExitCode, Problem, SpecError, UsageError

LAST_GOOD = "kiln-published"  # the tag the example workflow moves after a successful publish


def _legs(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number of legs, 1 or more")
    return n


def cmd_changed(args: argparse.Namespace) -> int:
    from .graph.changed import shards

    specs = list(args.specs)
    ref = args.ref
    if args.last_good is not None:  # every positional is a spec then
        specs = ([ref] if ref else []) + specs
        ref = None
    elif ref is None:
        raise UsageError("kiln changed: name a git REF to compare with, or --last-good TAG")
    names, base = api.changed(ref, specs, args.last_good)
    print(json.dumps(shards(names, args.shards) if args.shards else names))
    how = f" (the last good publish, tag {args.last_good})" if args.last_good else ""
    print(f"kiln: base {base}{how}: {len(names)} bundle{'' if len(names) == 1 else 's'} "
          "changed", file=sys.stderr)
    if args.base_output:  # where a workflow step reads the base from (e.g. $GITHUB_OUTPUT)
        with open(args.base_output, "a", encoding="utf-8") as out:
            out.write(f"base={base}\n")
    return ExitCode.OK


def cmd_schema(args: argparse.Namespace) -> int:
    from .resources import resource_bytes

    data = resource_bytes("schema", "bundle.schema.json")
    if args.path in (None, "-"):
        sys.stdout.write(data.decode())
        return ExitCode.OK
    path = Path(args.path)
    if path.is_dir() or path.suffix != ".json":  # a directory (made when absent)
        path = path / "bundle.schema.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    print(f"{path}: written; point specs at it with a first line "
          f"`# yaml-language-server: $schema={path.name}` (path relative to the spec)",
          file=sys.stderr)
    return ExitCode.OK


def validate_options(v: argparse.ArgumentParser) -> None:
    """`kiln validate`'s CI options (cli.py's parser calls this)."""
    v.add_argument("--format", choices=("text", "github"), default="text",
                   help="problem lines as text (default) or as GitHub annotations "
                   "(::error file=...,line=...,col=...::key: message)")
    v.add_argument("--schema-only", action="store_true",
                   help="check YAML and the schema only: no checkpoint, label or other file a "
                   "spec names is read (pre-commit, LFS-less clones)")


def wants(args: argparse.Namespace) -> bool:
    """Whether `kiln validate` is to be answered here (a CI form) rather than by cli.py."""
    return bool(getattr(args, "schema_only", False)) or getattr(args, "format", "text") != "text"


def cmd_validate(args: argparse.Namespace) -> int:
    """`ok` lines for the specs that validate, then every problem (text or annotations), exit 3
    when there is one."""
    paths = api.discover(args.specs)
    oks: list[str] = []
    problems: list[Problem] = []
    if args.schema_only:
        from .spec import load_document

        for path in paths:
            try:
                doc = load_document(path)
            except SpecError as exc:
                problems += exc.problems
                continue
            data = doc.data if isinstance(doc.data, dict) else {}
            oks.append(f"ok  {path.name}: {data.get('name')} {data.get('version')} (schema)")
    else:
        bundles, broken = api.load_bundles_partial(paths)
        oks = [f"ok  {b.spec_path.name}: {b.name} {b.version} ({', '.join(b.backends)})"
               for b in bundles]
        problems = [p for spec in broken for p in spec.problems]
    for line in oks:
        print(line)
    if not problems:
        return ExitCode.OK
    if args.format == "github":
        for p in sorted(set(problems)):
            print(github_annotation(p))
        return ExitCode.SPEC
    raise SpecError(problems)


def _escape(value: str, prop: bool = False) -> str:
    """GitHub's workflow-command escaping: data escapes %, CR and LF; properties also : and ,."""
    out = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return out.replace(":", "%3A").replace(",", "%2C") if prop else out


def github_annotation(p: Problem) -> str:
    message = f"{p.key or '<document>'}: {p.message}" + (f" ({p.hint})" if p.hint else "")
    return (f"::error file={_escape(p.file, True)},line={p.line},col={p.col},"
            f"title={_escape('kiln validate', True)}::{_escape(message)}")


def add_parsers(sub: Any) -> None:
    """Register `changed` and `schema` on cli.py's subparsers."""
    ch = sub.add_parser(
        "changed", help="bundles whose spec or inputs changed since a git ref (JSON, for a CI "
        "matrix)",
        description="Lists, as a JSON array on stdout, the bundles whose spec, inputs, checkpoint "
        "or tokenizer differ between REF (or the tag --last-good names) and the working tree, "
        "untracked files included; gitignored inputs count when they differ from what the last "
        "build here recorded. Works in a fresh clone without generated inputs or LFS objects: a "
        "spec that cannot be converted here is decided from the paths it names. The base used "
        "goes to stderr.",
        epilog="examples:\n  kiln changed origin/main\n  kiln changed --last-good "
        f"{LAST_GOOD} --shards 100\n  kiln changed 4b825dc642cb6eb9a060e54bf8d69288fbee4904  "
        "# the empty tree: every bundle",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ch.add_argument("ref", nargs="?", help="git ref to compare with, e.g. origin/main (with "
                    "--last-good: the first spec instead)")
    ch.add_argument("specs", nargs="*", help="spec files or directories (default: bundles/)")
    ch.add_argument("--last-good", metavar="TAG", help="compare with the commit TAG names when it "
                    "is an ancestor of HEAD, else with the empty tree (every bundle); CI moves "
                    f"TAG after each successful publish (e.g. {LAST_GOOD})")
    ch.add_argument("--shards", type=_legs, metavar="N", help="print at most N matrix legs, each "
                    "a string of space-separated bundle names (default: one name per entry)")
    ch.add_argument("--base-output", metavar="FILE", help="append `base=<commit>` to FILE "
                    "(e.g. $GITHUB_OUTPUT; default: none)")
    ch.add_argument("--json", action="store_true", help="accepted for symmetry: the output is "
                    "always JSON")
    ch.set_defaults(func=cmd_changed)

    sc = sub.add_parser(
        "schema", help="write the bundle JSON Schema (for editors and pre-commit)",
        description="Writes schema/bundle.schema.json as packaged with this modelkiln, so an "
        "editor's YAML language server can complete and check bundles/*.yaml.",
        epilog="examples:\n  kiln schema schema/            # writes schema/bundle.schema.json\n"
        "  kiln schema > bundle.schema.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sc.add_argument("path", nargs="?", help="a .json file, or a directory to write "
                    "bundle.schema.json into (default: stdout)")
    sc.set_defaults(func=cmd_schema)
