"""`kiln validate`'s CI forms and `kiln schema` (issue 24 items 10, 11): problems as GitHub
annotations on the spec lines, a schema-only check that reads no file a spec names (what the
pre-commit hook runs), and the schema written where an editor finds it."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import yaml

from helpers import BIN, REPO, SPEC
from modelkiln.cli import build_parser
from modelkiln.cli_review import github_annotation
from modelkiln.errors import Problem


def kiln(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "kiln"), *args], cwd=root, capture_output=True, text=True,
                          timeout=300, env={**os.environ})


def project(tmp_path: Path) -> Path:
    """Two specs, no inputs (a fresh clone): one valid by the schema, one with a typo."""
    (tmp_path / "bundles").mkdir()
    (tmp_path / "bundles" / "good.yaml").write_text(SPEC.format(name="good"))
    (tmp_path / "bundles" / "typo.yaml").write_text(
        SPEC.format(name="typo").replace("  default: 0.5", "  defualt: 0.5"))
    return tmp_path


def test_github_format_annotates_each_problem_on_its_line(tmp_path: Path) -> None:
    root = project(tmp_path)
    done = kiln(root, "validate", "--schema-only", "--format", "github")
    assert done.returncode == 3
    lines = done.stdout.splitlines()
    assert lines[0] == "ok  good.yaml: good 1.0.0 (schema)"
    line = next(ln for ln in lines if "defualt" in ln)
    spec_line = (root / "bundles" / "typo.yaml").read_text().splitlines().index("  defualt: 0.5")
    assert line.startswith(f"::error file=bundles/typo.yaml,line={spec_line + 1},col=3,"
                           "title=kiln validate::thresholds.defualt: unknown key 'defualt'")
    assert "did you mean 'default'?" in line and "::error" not in done.stderr
    full = kiln(root, "validate", "--format", "github")  # the inputs are absent: annotated too
    assert full.returncode == 3
    assert re.search(r"^::error file=bundles/good\.yaml,line=\d+,col=\d+,title=kiln validate::"
                     r"source\.checkpoint: ", full.stdout, re.M)


def test_annotation_escaping_keeps_one_line() -> None:
    p = Problem("a,b:c.yaml", 3, 4, "k", "50% bad\nsecond line")
    assert github_annotation(p) == ("::error file=a%2Cb%3Ac.yaml,line=3,col=4,"
                                    "title=kiln validate::k: 50%25 bad%0Asecond line")


def test_schema_only_reads_no_named_file(tmp_path: Path) -> None:
    root = project(tmp_path)
    good = kiln(root, "validate", "--schema-only", "bundles/good.yaml")
    assert good.returncode == 0, good.stderr  # its checkpoint and label files do not exist
    assert good.stdout == "ok  good.yaml: good 1.0.0 (schema)\n"
    bad = kiln(root, "validate", "--schema-only")
    assert bad.returncode == 3 and "bundles/typo.yaml:" in bad.stderr
    assert kiln(root, "validate", "bundles/good.yaml").returncode == 3  # the full check reads them


def test_kiln_schema_writes_the_packaged_schema(tmp_path: Path) -> None:
    want = (REPO / "schema" / "bundle.schema.json").read_bytes()
    done = kiln(tmp_path, "schema", "editor")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "editor" / "bundle.schema.json").read_bytes() == want
    assert kiln(tmp_path, "schema").stdout.encode() == want


def test_pre_commit_hooks_run_kiln_validate_on_bundle_specs() -> None:
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    by_id = {h["id"]: h for h in hooks}
    assert set(by_id) == {"kiln-validate", "kiln-validate-full"}
    parser = build_parser()
    for hook in hooks:  # the fields pre-commit requires, and an entry our parser accepts
        assert {"id", "name", "entry", "language"} <= set(hook) and hook["language"] == "python"
        argv = shlex.split(hook["entry"])
        assert argv[0] == "kiln"
        args = parser.parse_args([*argv[1:], "bundles/x.yaml"])  # pre-commit appends files
        assert args.specs == ["bundles/x.yaml"]
        files = re.compile(hook["files"])
        assert files.search("bundles/x.yaml") and files.search("bundles/y.yml")
        assert not files.search("bundles/x/label_order.json") and not files.search("x.yaml")
    assert parser.parse_args(shlex.split(by_id["kiln-validate"]["entry"])[1:]).schema_only
