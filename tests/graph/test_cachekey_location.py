"""Cache keys do not depend on where modelkiln is installed.

The serving image ships modelkiln's runtime, so its files are inputs of the image task. One venv
serving two clones has the package inside one project (named relative to it) and outside the other
(named by absolute path): the same image got two keys. Both now name those files by their path
inside the package.
"""
from __future__ import annotations

from pathlib import Path

import modelkiln
from helpers import SPEC, make_project
from modelkiln.api import load_bundles
from modelkiln.artifacts.digest import StatCache
from modelkiln.graph.cachekey import action_key, material
from modelkiln.graph.state import digest_or_missing, rel_to
from modelkiln.paths import Layout
from modelkiln.stages import image
from modelkiln.stages.base import StagePlan

PACKAGE = Path(modelkiln.__file__).resolve().parent
# The folder that holds the installed package: the clone for an editable install (src/modelkiln
# lies in it), site-packages otherwise. A project there has modelkiln inside it.
INSTALL_ROOT = PACKAGE.parents[1]

IMAGE_SPEC = SPEC + """\
  onnx: {{}}
image:
  repository: registry.example.com/models/tiny
  base: registry.example.com/debian@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
  backend: onnx
"""


def test_runtime_files_are_named_the_same_inside_and_outside_the_project(tmp_path: Path) -> None:
    files = image.runtime_files()
    assert files, "the image ships modelkiln's runtime"
    for f in files:
        inside = rel_to(f, INSTALL_ROOT)
        outside = rel_to(f, tmp_path)
        assert inside == outside == f"modelkiln:{f.relative_to(PACKAGE).as_posix()}"


def _image_plan(root: Path) -> StagePlan:
    (bundle,) = load_bundles([root / "bundles" / "tiny.yaml"])
    (plan,) = [p for p in image.plan(bundle, Layout(root))
               if p.backend == "onnx"]
    return plan


def _key(plan: StagePlan, root: Path) -> str:
    stat = StatCache(None)
    inputs = {rel_to(p, root): digest_or_missing(stat, p) for p in plan.inputs}
    return action_key(material(plan, inputs, {"package:tiny-onnx": "same-upstream"}))


def test_image_key_is_the_same_for_two_clones_at_different_paths(
        tmp_path: Path, tiny_inputs: Path) -> None:
    a = make_project(tmp_path / "clone-a", tiny_inputs, spec=IMAGE_SPEC)
    b = make_project(tmp_path / "elsewhere" / "clone-b", tiny_inputs, spec=IMAGE_SPEC)
    plan_a, plan_b = _image_plan(a.root), _image_plan(b.root)
    assert any(p.is_relative_to(PACKAGE) for p in plan_a.inputs)
    assert _key(plan_a, a.root) == _key(plan_b, b.root)
    # the project that holds the install (an editable clone) names them the same as well
    names_here = {rel_to(p, INSTALL_ROOT) for p in plan_a.inputs if p.is_relative_to(PACKAGE)}
    names_a = {rel_to(p, a.root) for p in plan_a.inputs if p.is_relative_to(PACKAGE)}
    assert names_here == names_a


def test_a_runtime_edit_still_changes_the_key(tmp_path: Path, tiny_inputs: Path) -> None:
    a = make_project(tmp_path / "clone-a", tiny_inputs, spec=IMAGE_SPEC)
    plan = _image_plan(a.root)
    stat = StatCache(None)
    inputs = {rel_to(p, a.root): digest_or_missing(stat, p) for p in plan.inputs}
    edited = dict(inputs, **{"modelkiln:errors.py": "0" * 64})
    ups = {"package:tiny-onnx": "same-upstream"}
    assert action_key(material(plan, inputs, ups)) != action_key(material(plan, edited, ups))
