"""Shared test helpers: a throwaway modelkiln project with a real tiny model, and a doit runner.

Nothing here is mocked: projects hold a real seeded BERT checkpoint made by modelkiln.demo, and
builds run the real `doit` in a subprocess, exactly as a user would.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LABELS = ("alpha", "beta", "gamma", "delta")
BIN = Path(sys.executable).parent

SPEC = """\
# yaml-language-server: $schema=../schema/bundle.schema.json
apiVersion: modelkiln/v1
kind: Bundle
name: {name}
version: "1.0.0"
source:
  checkpoint: {name}/checkpoint
  task: multi-label-classification
labels:
  order: {name}/label_order.json
  fields: {name}/registry_label_fields.json
thresholds:
  strategy: f1-optimal
  default: 0.5
  calibration: {name}/calibration.jsonl
backends:
  pytorch: {{}}
"""


def make_inputs(directory: Path, seed: int = 0, weights: str = "safetensors") -> None:
    """A tiny trained checkpoint, label files and calibration rows under `directory`."""
    from modelkiln import demo

    held_out = demo.make_checkpoint(directory / "checkpoint", LABELS, seed=seed, hidden=32,
                                    layers=1, steps=15, rows=200, weights=weights)
    demo.write_label_files(directory, LABELS)
    demo.write_jsonl(directory / "calibration.jsonl", held_out[:80])


@dataclass
class Run:
    code: int
    output: str
    executed: set[str]
    fresh: set[str]


@dataclass
class Project:
    root: Path
    name: str

    @property
    def spec(self) -> Path:
        return self.root / "bundles" / f"{self.name}.yaml"

    @property
    def inputs(self) -> Path:
        return self.root / "bundles" / self.name

    def edit(self, old: str, new: str) -> None:
        text = self.spec.read_text()
        assert old in text, f"{old!r} not in spec"
        self.spec.write_text(text.replace(old, new, 1))

    def doit(self, *args: str, timeout: float = 600) -> Run:
        """Run the real `doit` in the project; parse which tasks ran ('.') and which were fresh ('--')."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        done = subprocess.run([str(BIN / "doit"), *args], cwd=self.root, capture_output=True,
                              text=True, timeout=timeout, env=env)
        out = done.stdout + done.stderr
        return Run(done.returncode, out, set(re.findall(r"^\.  (\S+)", out, re.M)),
                   set(re.findall(r"^-- (\S+)", out, re.M)))

    def kiln(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "kiln"), *args], cwd=self.root, capture_output=True,
                              text=True, timeout=timeout)

    def dist(self, backend: str = "pytorch", version: str = "1.0.0") -> Path:
        return self.root / "dist" / self.name / version / backend


def make_project(root: Path, inputs: Path, name: str = "tiny", spec: str = SPEC) -> Project:
    """A project at `root`: dodo.py, bundles/<name>.yaml and a copy of the prepared inputs."""
    (root / "bundles").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    shutil.copytree(inputs, root / "bundles" / name, copy_function=shutil.copy2)
    (root / "bundles" / f"{name}.yaml").write_text(spec.format(name=name))
    return Project(root, name)


def member_bytes(tar: tarfile.TarFile, member: str | tarfile.TarInfo) -> bytes:
    """The bytes of a regular file in `tar` (extractfile answers None only for non-files)."""
    reader = tar.extractfile(member)
    assert reader is not None, f"{member} is not a regular file"
    return reader.read()
