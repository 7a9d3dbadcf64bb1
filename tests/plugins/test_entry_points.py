"""modelkiln's own stages, backends and transports are registered through the entry-point groups
a third party uses, and the tables in code (the fallback for stale metadata) say the same; the
spec key publish.to is publish.s3's scheme-neutral name."""
from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

from helpers import BIN, make_project
from modelkiln import plugins
from modelkiln.backends import BUILTIN_BACKENDS, Backend, backends
from modelkiln.graph.plans import BUILTIN_STAGES, STAGES
from modelkiln.stages.base import Stage
from modelkiln.transport.schemes import BUILTIN_TRANSPORTS, schemes

REPO = Path(__file__).parents[2]


def _declared(group: str) -> dict[str, str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return dict(data["project"]["entry-points"][group])


def test_pyproject_registers_every_builtin_and_only_them() -> None:
    for group, table in ((plugins.STAGES, BUILTIN_STAGES), (plugins.BACKENDS, BUILTIN_BACKENDS),
                         (plugins.TRANSPORTS, BUILTIN_TRANSPORTS)):
        declared = _declared(group)
        # `<scheme>+<part>` entries add a capability from a module above the transport layer
        # (sources' readers): registered, but not in the transport table's code
        plain = {n: v for n, v in declared.items() if "+" not in n}
        assert set(plain) == set(table), group
        for name, value in plain.items():
            assert getattr(table[name], "__name__", None) == value, (group, name)


def test_each_builtin_carries_its_protocol_members() -> None:
    for name, stage in STAGES.items():
        assert all(hasattr(stage, m) for m in plugins.MEMBERS[plugins.STAGES]), name
        assert name == stage.NAME and stage.DOC
    for name, backend in backends().items():
        assert all(hasattr(backend, m) for m in plugins.MEMBERS[plugins.BACKENDS]), name
        assert name == backend.NAME and set(backend.STAGES) <= set(STAGES)
    assert {"file", "s3"} <= set(schemes())


def test_a_builtin_missing_from_stale_metadata_is_filled_in_from_code() -> None:
    table: dict[str, object] = {"weights": BUILTIN_STAGES["weights"]}
    stale: dict[str, Stage] = {"not-in-metadata": BUILTIN_STAGES["labels"]}
    try:
        found = {p.name: p for p in plugins.plugins("modelkiln.test-stale", {**table, **stale})}
    finally:
        plugins.reset()
    assert found["not-in-metadata"].obj is BUILTIN_STAGES["labels"]
    assert found["not-in-metadata"].package == "modelkiln" and found["weights"].problem is None


def test_backend_modules_satisfy_the_protocol() -> None:
    typed: dict[str, Backend] = dict(BUILTIN_BACKENDS)  # mypy checks the modules, pytest runs it
    assert list(typed) == ["pytorch", "onnx", "tensorrt"]


def test_publish_to_is_publish_s3_by_another_name(tmp_path: Path, tiny_inputs: Path) -> None:
    project = make_project(tmp_path / "proj", tiny_inputs)
    base = project.spec.read_text()

    def validate(extra: str) -> subprocess.CompletedProcess[str]:
        project.spec.write_text(base + extra)
        return subprocess.run([str(BIN / "kiln"), "validate"], cwd=project.root,
                              capture_output=True, text=True, timeout=120)

    assert validate(f"publish:\n  to: {(tmp_path / 'pub').as_uri()}/{{version}}/\n").returncode == 0
    assert validate("publish:\n  s3: s3://bucket/models/{version}/\n").returncode == 0
    both = validate("publish:\n  to: s3://bucket/a/\n  s3: s3://bucket/b/\n")
    assert both.returncode == 3 and "publish.to and publish.s3 both name" in both.stderr
    unknown = validate("publish:\n  to: nope://bucket/a/\n")
    assert unknown.returncode == 3 and "nope:// is not an installed transport" in unknown.stderr
