"""The registry files: malformed layers give file:line:col problems (exit 3), curated entries may not
hold dynamic fields, the snapshot is regenerated from the layers and never read back."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelkiln import registry as R
from modelkiln.errors import SpecError
from modelkiln.registry.layers import RegistryFiles

HEX = "ab" * 32


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def curated(tmp_path: Path, text: str) -> Path:
    return write(tmp_path / "configs" / R.CURATED, text)


def problems(tmp_path: Path) -> SpecError:
    with pytest.raises(SpecError) as err:
        R.list_entries(include_non_installed=True, registry_dir=tmp_path / "configs")
    assert err.value.exit_code == 3
    return err.value


def test_missing_files_mean_an_empty_registry(tmp_path: Path) -> None:
    assert R.list_entries(include_non_installed=True, registry_dir=tmp_path / "nothing") == []


def test_bad_json_is_a_spec_error_with_a_line(tmp_path: Path) -> None:
    curated(tmp_path, '{\n  "schema_version": 1,\n  "entries": [\n    {"name": "a",}\n  ]\n')
    err = problems(tmp_path)
    assert len(err.problems) >= 1
    first = err.problems[0]
    assert first.file.endswith(R.CURATED) and first.line >= 4
    assert f"{R.CURATED}:{first.line}:" in str(err)


def test_wrong_types_are_reported_at_their_keys(tmp_path: Path) -> None:
    curated(tmp_path, """{
  "schema_version": 1,
  "entries": [
    {"name": "a", "roles": "vision", "capabilities": [1]},
    {"name": "b c"}
  ]
}
""")
    err = problems(tmp_path)
    keys = {(p.key, p.line) for p in err.problems}
    assert ("entries[0].roles", 4) in keys
    assert ("entries[0].capabilities[0]", 4) in keys
    assert ("entries[1].name", 5) in keys


def test_unknown_key_gets_a_suggestion(tmp_path: Path) -> None:
    curated(tmp_path, '{"schema_version": 1, "entries": [{"name": "a", "capabilites": []}]}')
    err = problems(tmp_path)
    assert "did you mean 'capabilities'" in str(err)


def test_top_level_must_be_a_registry_document(tmp_path: Path) -> None:
    curated(tmp_path, '[{"name": "a"}]')
    assert problems(tmp_path).problems


@pytest.mark.parametrize("key,value", [
    ("aggregate_sha256", f'"{HEX}"'),
    ("version_lock", f'{{"locked": true, "expected_hash": "{HEX}", "last_verified": null}}'),
    ("artifacts", '{"store": "/opt/models/x/versions/1"}'),
    ("files", "[]"),
    ("version", '"1.0.0"'),
])
def test_curated_entries_hold_no_dynamic_fields(tmp_path: Path, key: str, value: str) -> None:
    path = curated(tmp_path, f"""{{
  "schema_version": 1,
  "entries": [
    {{
      "name": "a",
      "backend": "onnx",
      "{key}": {value}
    }}
  ]
}}
""")
    err = problems(tmp_path)
    (problem,) = err.problems
    assert (problem.file, problem.line, problem.col) == (str(path), 7, 7)
    assert problem.key == f"entries[0].{key}" and "dynamic" in problem.message
    assert R.DISCOVERED in problem.hint


def test_the_discovered_layer_may_hold_them(tmp_path: Path) -> None:
    write(tmp_path / "configs" / R.DISCOVERED, json.dumps({"schema_version": 1, "entries": [
        {"name": "a", "version": "1", "aggregate_sha256": HEX,
         "version_lock": {"locked": True, "expected_hash": HEX, "last_verified": None}}]}))
    (entry,) = R.list_entries(include_non_installed=True, registry_dir=tmp_path / "configs")
    assert entry.version_lock.locked and entry.expected_hash == HEX


def test_duplicates_and_problems_of_both_files_in_one_error(tmp_path: Path) -> None:
    curated(tmp_path, '{"schema_version": 1, "entries": [{"name": "a"}, {"name": "a"}]}')
    write(tmp_path / "configs" / R.DISCOVERED, '{"schema_version": 2, "entries": []}')
    err = problems(tmp_path)
    files = {Path(p.file).name for p in err.problems}
    assert files == {R.CURATED, R.DISCOVERED}
    assert any("duplicate name 'a'" in p.message for p in err.problems)


def test_merge_curated_static_wins_discovered_supplies_dynamic(tmp_path: Path) -> None:
    curated(tmp_path, json.dumps({"schema_version": 1, "entries": [
        {"name": "m", "roles": ["reviewed"], "served_model_id": "curated-id"},
        {"name": "only-curated", "backend": "onnx"}]}))
    write(tmp_path / "configs" / R.DISCOVERED, json.dumps({"schema_version": 1, "entries": [
        {"name": "m", "backend": "onnx", "roles": ["from-build"], "version": "2",
         "aggregate_sha256": HEX}]}))
    merged = {e.name: e for e in R.list_entries(include_non_installed=True,
                                                registry_dir=tmp_path / "configs")}
    assert merged["m"].roles == ("reviewed",) and merged["m"].served_model_id == "curated-id"
    assert merged["m"].backend == "onnx" and merged["m"].version == "2"
    assert merged["m"].aggregate_sha256 == HEX
    assert merged["only-curated"].version is None


def test_snapshot_is_regenerated_valid_and_never_read(tmp_path: Path) -> None:
    from modelkiln.spec import load_document

    configs = tmp_path / "configs"
    curated(tmp_path, json.dumps({"schema_version": 1, "entries": [{"name": "m", "roles": ["r"]}]}))
    snapshot = R.regenerate(configs)
    doc = load_document(snapshot, schema="registry")  # the snapshot passes the same schema
    assert doc.data["entries"] == [{"name": "m", "roles": ["r"]}]
    assert "do not edit" in doc.data["comment"]
    snapshot.write_text('{"schema_version": 1, "entries": [{"name": "hand-edited"}]}')
    names = [e.name for e in R.list_entries(include_non_installed=True, registry_dir=configs)]
    assert names == ["m"]  # merged from the sources, not read from the snapshot
    assert "hand-edited" not in snapshot.read_text()  # and the stale snapshot was regenerated


def test_directory_argument_then_environment_then_configs(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "bundles").mkdir()
    monkeypatch.chdir(tmp_path / "bundles")  # the project's configs/, from any directory inside it
    monkeypatch.delenv("KILN_REGISTRY_DIR", raising=False)
    assert RegistryFiles().directory == tmp_path.resolve() / "configs"
    monkeypatch.setenv("KILN_REGISTRY_DIR", str(tmp_path / "env"))
    assert RegistryFiles().directory == tmp_path / "env"
    assert RegistryFiles(tmp_path / "arg").directory == tmp_path / "arg"
    write(tmp_path / "env" / R.CURATED, '{"schema_version": 1, "entries": [{"name": "e"}]}')
    assert [e.name for e in R.list_entries(include_non_installed=True)] == ["e"]
