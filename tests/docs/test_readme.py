"""Every README command block runs as written, so the README cannot drift from the program.

Each fenced `sh` block (other than the two top commands: `.ci/run` is the second, and the first is
what the `example` fixture does step by step) runs with bash -e in one temporary copy of the
example project: the specs of `bundles/`, the example inputs made by `python -m modelkiln.demo`,
the Debian base made from the CI's root filesystem, built with `kiln build`. Blocks run in README
order and share that project, as a reader following the README would.

A block that cannot run here says so in the README, on the line before its fence, where readers
see it too:

    *Not run by the README test: needs an S3 bucket.*

and is reported as skipped with that reason (`pytest -rs`).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
SKIP = re.compile(r"^\*Not run by the README test: (.+)\.\*$")
FENCE = re.compile(r"^\s*```(\S*)\s*$")  # a list item's block is indented


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    text: str
    skip: str | None

    def __str__(self) -> str:
        return f"README.md:{self.line}"


def sh_blocks(text: str) -> list[Block]:
    """Fenced `sh` blocks, each with the skip reason written above it (if any)."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].lstrip().startswith("```"))
        if m.group(1) == "sh":
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            reason = SKIP.search(before.strip())
            indent = len(lines[i]) - len(lines[i].lstrip())
            body = "\n".join(x[indent:] for x in lines[i + 1:end])
            out.append(Block(i + 1, body, reason.group(1) if reason else None))
        i = end + 1
    return out


BLOCKS = sh_blocks(README.read_text())
TOP, REST = BLOCKS[:2], BLOCKS[2:]


def test_the_two_top_commands_come_first_and_ci_runs_the_second() -> None:
    assert [b.line for b in TOP] == [3, 6], "the README opens with the two commands"
    assert TOP[1].text.strip() in (REPO / ".ci" / "run").read_text()


def test_skip_markers_are_parsed() -> None:
    blocks = sh_blocks("x\n*Not run by the README test: needs a GPU.*\n```sh\nfalse\n```\n"
                       "```sh\ntrue\n```\n```yaml\na: 1\n```\n- item\n\n  *Not run by the README "
                       "test: placeholders.*\n  ```sh\n  echo <x>\n  ```\n")
    assert [(b.line, b.text, b.skip) for b in blocks] == [(3, "false", "needs a GPU"),
                                                          (6, "true", None),
                                                          (15, "echo <x>", "placeholders")]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KILN_SIGNING", "REGISTRY_", "MODEL_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(home))
    return env


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example project built as the README's first command builds it (each step here)."""
    from enginehost import base_rootfs
    from modelkiln.artifacts.oci.rootfs import layout_from_tar

    root = tmp_path_factory.mktemp("readme-example")
    home = root / "home"
    home.mkdir()
    (root / "bundles").mkdir()
    for spec in sorted((REPO / "bundles").glob("*.yaml")) + sorted((REPO / "bundles").glob("*.lock")):
        shutil.copy(spec, root / "bundles" / spec.name)
    (root / "configs").mkdir()
    shutil.copy(REPO / "configs" / "model_registry.curated.json", root / "configs")  # the rest is generated
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    layout_from_tar(base_rootfs(root), root / "bases" / "debian-bookworm-python3")
    for step in (["python", "-m", "modelkiln.demo", "bundles"], ["kiln", "build"]):
        done = subprocess.run([str(BIN / step[0]), *step[1:]], cwd=root, env=_env(home),
                              capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"{' '.join(step)}:\n{done.stdout}\n{done.stderr}"
    return root


@pytest.mark.slow
@pytest.mark.parametrize("block", REST, ids=str)
def test_readme_block_runs(block: Block, request: pytest.FixtureRequest) -> None:
    if block.skip:
        pytest.skip(f"{block}: {block.skip}")
    example: Path = request.getfixturevalue("example")
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.text], cwd=example,
                          env=_env(example / "home"), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (f"{block} exited {done.returncode}:\n{block.text}\n--- output\n"
                                  f"{done.stdout}\n{done.stderr}")


def spec_example(text: str) -> str:
    """The README's spec example: the first yaml block under "## Spec files"."""
    section = text.split("\n## Spec files", 1)[1]
    return section.split("```yaml\n", 1)[1].split("\n```", 1)[0] + "\n"


@pytest.mark.slow
def test_readme_spec_example_validates_without_warnings(request: pytest.FixtureRequest) -> None:
    example: Path = request.getfixturevalue("example")
    where = example / "readme-spec"
    where.mkdir(exist_ok=True)
    if not (where / "registry-v3").exists():  # the inputs it names, as beside bundles/
        (where / "registry-v3").symlink_to(example / "bundles" / "registry-v3")
    (where / "registry-v3.yaml").write_text(spec_example(README.read_text()))
    done = subprocess.run([str(BIN / "kiln"), "validate", str(where / "registry-v3.yaml")],
                          cwd=example, env=_env(example / "home"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warn" not in (done.stdout + done.stderr).lower(), done.stdout + done.stderr


def test_readme_spec_example_asks_for_no_opset_the_exporter_warns_about() -> None:
    import yaml

    spec = yaml.safe_load(spec_example(README.read_text()))
    opset = (spec["backends"].get("onnx") or {}).get("opset")
    assert opset is None or opset >= 18, "the exporter's minimum opset is 18; lower ones warn"
