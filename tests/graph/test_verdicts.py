"""The up-to-date verdicts (graph.verdicts): a no-op re-checks a bundle by stats alone, and
anything the full check would notice makes the verdict miss.

Real files, real stamps and the real `status`; a two-task bundle (`a` reads an input, `b` reads
`a`'s output). Files are dated a minute back so that the 100 ms racy rule does not refuse them.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from modelkiln.artifacts.digest import StatCache, sha256_file
from modelkiln.graph import state
from modelkiln.graph.state import stamp_for, status
from modelkiln.graph.verdicts import BundleMemo, Verdicts
from modelkiln.stages.base import StagePlan, params


class Bundle:
    """Two built tasks with their inputs, outputs and stamps on disk; verdicts go to
    <root>/.kiln/verdicts.json as in a project."""

    def __init__(self, root: Path, opt_input: bool = False):
        self.root = root
        self.verdicts = root / ".kiln" / "verdicts.json"
        self.input = root / "in.txt"
        self.optional = root / "optional.txt"  # absent: recorded as "missing"
        self.input.write_text("input")
        self.plans = [self.plan("a", (self.input, *((self.optional,) if opt_input else ())), ()),
                      self.plan("b", (), ("a:x",))]
        self.stamps = {p.task: p.stamp for p in self.plans}
        for p in self.plans:
            self.build(p)
        self.age()

    def plan(self, stage: str, inputs: tuple[Path, ...], upstream: tuple[str, ...],
             value: int = 1) -> StagePlan:
        return StagePlan(task=f"{stage}:x", stage=stage, bundle="x", doc=stage,
                         out_dir=self.root / "build" / stage,
                         stamp=self.root / "build" / ".stamps" / f"{stage}.json",
                         inputs=inputs, upstream=upstream, params=params("1", value=value))

    def build(self, plan: StagePlan, content: str = "") -> None:
        plan.out_dir.mkdir(parents=True, exist_ok=True)
        (plan.out_dir / "out.txt").write_text(content or f"{plan.task} output")
        cache = StatCache(None)
        inputs = state.snapshot(plan, self.root, cache, self.stamps)
        outputs = {"out.txt": sha256_file(plan.out_dir / "out.txt")}
        plan.stamp.parent.mkdir(parents=True, exist_ok=True)
        plan.stamp.write_text(json.dumps(stamp_for(plan, inputs, outputs, {})))

    def age(self) -> None:
        past = time.time() - 60
        for path in self.root.rglob("*"):
            if path.is_file():
                os.utime(path, (past, past))
        time.sleep(0.15)  # setting the mtime sets the ctime to now: let that leave the racy window

    def check(self, verdicts: Verdicts) -> list[bool]:
        """Each task's `status(...).run`, as one up-to-date pass over the bundle does it."""
        memo = BundleMemo(verdicts, "x", self.root, self.plans, self.stamps)
        cache = StatCache(None)
        return [status(p, self.root, cache, self.stamps, memo=memo).run for p in self.plans]


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    return Bundle(tmp_path)


@pytest.fixture
def stamp_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every stamp the full check parses (a verdict hit parses none)."""
    seen: list[Path] = []
    real = state.read_stamp

    def counting(path: Path) -> state.Stamp | None:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(state, "read_stamp", counting)
    return seen


def saved(bundle: Bundle) -> Verdicts:
    """A full pass that finds the bundle up to date, saved as a process would at exit; then the
    file read back as the next process would."""
    first = Verdicts(bundle.verdicts)
    assert bundle.check(first) == [False, False]
    first.save()
    return Verdicts(bundle.verdicts)


def test_an_unchanged_bundle_is_up_to_date_without_parsing_a_stamp(
        bundle: Bundle, stamp_reads: list[Path]) -> None:
    again = saved(bundle)
    stamp_reads.clear()
    assert bundle.check(again) == [False, False]
    assert stamp_reads == []


def test_a_full_check_without_a_verdict_parses_stamps(bundle: Bundle, stamp_reads: list[Path]) -> None:
    assert bundle.check(Verdicts(None)) == [False, False]
    assert stamp_reads  # the contrast that makes the test above mean something


@pytest.mark.parametrize(("change", "expected"), [
    ("input", [True, False]),  # b follows once a has run and changed its outputs
    ("output", [False, True]),
    ("upstream-stamp", [False, True]),
    ("own-stamp", [False, True]),
    ("delete-output", [False, True]),
])
def test_any_change_to_a_file_the_check_reads_misses(bundle: Bundle, change: str,
                                                     expected: list[bool]) -> None:
    again = saved(bundle)
    a, b = bundle.plans
    if change == "input":
        bundle.input.write_text("edited")
    elif change == "output":
        (b.out_dir / "out.txt").write_text("corrupted!")
    elif change == "upstream-stamp":  # a rebuilt with other bytes: b must follow
        bundle.build(a, "a's new output")
    elif change == "own-stamp":  # another run's stamp, for other params
        recorded = json.loads(b.stamp.read_text())
        b.stamp.write_text(json.dumps({**recorded, "params_digest": "0" * 64}))
    else:
        (b.out_dir / "out.txt").unlink()
    assert bundle.check(again) == expected


def test_a_same_size_output_edit_with_its_mtime_put_back_misses(bundle: Bundle) -> None:
    again = saved(bundle)
    out = bundle.plans[1].out_dir / "out.txt"
    st = out.stat()
    out.write_text("b:x OUTPUT")  # same size as "b:x output"
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back; the ctime moved on
    assert out.stat().st_size == st.st_size and out.stat().st_mtime_ns == st.st_mtime_ns
    assert bundle.check(again) == [False, True]


def test_a_changed_plan_misses(bundle: Bundle) -> None:
    again = saved(bundle)
    bundle.plans[1] = bundle.plan("b", (), ("a:x",), value=2)  # the spec section changed
    assert bundle.check(again) == [False, True]


def test_an_absent_optional_input_that_appears_misses(tmp_path: Path) -> None:
    bundle = Bundle(tmp_path, opt_input=True)
    again = saved(bundle)
    bundle.optional.write_text("now signed")
    assert bundle.check(again)[0] is True


def test_a_file_modified_within_the_racy_window_is_never_vouched_for(bundle: Bundle) -> None:
    os.utime(bundle.input)  # now: a second write in the same tick could repeat this stat
    first = Verdicts(bundle.verdicts)
    assert bundle.check(first) == [False, False]
    first.save()
    assert not bundle.verdicts.exists()


def test_a_task_that_runs_drops_the_bundle_verdict(bundle: Bundle) -> None:
    again = saved(bundle)
    (bundle.plans[1].out_dir / "out.txt").unlink()
    assert bundle.check(again) == [False, True]
    again.save()
    assert "x" not in json.loads(bundle.verdicts.read_text())["bundles"]


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"format": 1, "bundles": {"x": [1]}}',
                                     b'{"format": 1, "bundles": {"x": ["k", [["p"]]]}}'])
def test_an_unreadable_verdicts_file_is_a_miss_not_an_error(bundle: Bundle, content: bytes) -> None:
    bundle.verdicts.parent.mkdir()
    bundle.verdicts.write_bytes(content)
    assert bundle.check(Verdicts(bundle.verdicts)) == [False, False]


@pytest.mark.parametrize("files", [[[1, None]], [["build/.stamps/a.json", "sig"]], "x", [None]])
def test_a_hostile_entry_with_the_right_key_is_a_miss_not_an_error(bundle: Bundle,
                                                                   files: object) -> None:
    from modelkiln.graph.verdicts import plans_key

    key = plans_key(bundle.plans, bundle.stamps)
    bundle.verdicts.parent.mkdir()
    bundle.verdicts.write_text(json.dumps({"format": 1, "bundles": {"x": [key, files]}}))
    assert bundle.check(Verdicts(bundle.verdicts)) == [False, False]


def test_a_removed_bundles_verdict_is_dropped_when_the_file_is_next_written(bundle: Bundle) -> None:
    again = saved(bundle)
    for p in bundle.plans:
        p.stamp.unlink()
    again.keep("other", "k", [])  # something else makes the file dirty
    again.save()
    assert "x" not in json.loads(bundle.verdicts.read_text())["bundles"]
