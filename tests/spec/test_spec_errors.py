"""Golden error texts: every kind of spec mistake, exactly as a user reads it."""
from __future__ import annotations

from pathlib import Path

import pytest

from modelkiln.errors import SpecError
from modelkiln.spec import load_document, load_documents
from spec.spec_helpers import BASE, Write, edit


def problems(*paths: Path) -> list[str]:
    """The problem lines a load of `paths` raises (fails the test if it does not raise)."""
    with pytest.raises(SpecError) as info:
        load_documents(list(paths))
    assert info.value.exit_code == 3
    return [str(p) for p in info.value.problems]


def test_wrong_type(write: Write) -> None:
    path = write("b.yaml", edit("opset: 17", "opset: latest"))
    assert problems(path) == ["b.yaml:16:12: backends.onnx.opset: expected integer, got 'latest'"]


def test_wrong_type_hints(write: Write) -> None:
    text = edit('version: "3.0.0"', "version: 3.0")
    text = edit("  onnx:\n", "  pytorch:\n  onnx:\n    enabled: yes\n    parity: {samples: 2.5, atol: '1e-4'}\n", text)
    assert problems(write("b.yaml", text)) == [
        "b.yaml:4:10: version: expected string, got 3.0 (put the value in quotes to keep it as text)",
        "b.yaml:15:11: backends.pytorch: expected mapping, got null (write {} for an empty mapping)",
        "b.yaml:17:14: backends.onnx.enabled: expected boolean, got 'yes' (write true or false)",
        "b.yaml:18:23: backends.onnx.parity.samples: expected integer, got 2.5 (write a whole number)",
        "b.yaml:18:34: backends.onnx.parity.atol: expected number, got '1e-4' (remove the quotes)",
    ]


def test_unknown_key_with_did_you_mean_points_at_the_key(write: Write) -> None:
    text = edit("    opset: 17\n", "    opsett:\n      17\n")
    text += "backend: {}\nlicence: mit\n"
    assert problems(write("b.yaml", text)) == [
        "b.yaml:16:5: backends.onnx.opsett: unknown key 'opsett' (did you mean 'opset'?)",
        "b.yaml:18:1: backend: unknown key 'backend' (did you mean 'backends'?)",
        "b.yaml:19:1: licence: unknown key 'licence' (allowed keys: apiVersion, backends, card, description, "
        "embedding, entities, generation, image, kind, labels, metadata, name, publish, registry, "
        "source, thresholds, version)",
    ]


def test_missing_required_key(write: Write) -> None:
    text = edit("  task: multi-label-classification\n", "").replace("kind: Bundle\n", "")
    assert problems(write("b.yaml", text)) == [
        "b.yaml:1:1: <document>: missing required key 'kind' (add kind: Bundle)",
        "b.yaml:4:1: source: missing required key 'task' "
        "(add task: one of multi-label-classification, single-label-classification, "
        "feature-extraction, image-classification, text-generation, token-classification)",
    ]


def test_missing_key_hint_comes_from_the_schema_description(write: Write) -> None:
    """The hint names the key and says what it is (the description's first sentence), not
    `add checkpoint: <description>`, which reads as if the description were the value."""
    from modelkiln.spec import load_schema
    from modelkiln.spec.validate import _sentence

    props = load_schema("bundle")["properties"]
    what = {key: _sentence(props[section]["properties"][key]["description"])
            for section, key in (("source", "checkpoint"), ("thresholds", "default"))}
    text = edit("  checkpoint: ckpt\n", "").replace("  default: 0.5\n", "")
    assert problems(write("b.yaml", text)) == [
        f"b.yaml:5:1: source: missing required key 'checkpoint' (add the 'checkpoint' key: "
        f"{what['checkpoint']})",
        f"b.yaml:10:1: thresholds: missing required key 'default' (add the 'default' key: "
        f"{what['default']})",
    ]
    assert what["default"] == "Threshold for labels without their own value, between 0 and 1"


def test_bad_enum_and_bounds(write: Write) -> None:
    text = edit("strategy: fixed", "strategy: f1-optimum")
    text = edit("default: 0.5", "default: 1.5", text)
    text = edit("opset: 17", "opset: 9\n    parity: {atol: 0}\n  tensorrt: {precision: fp8}", text)
    assert problems(write("b.yaml", text)) == [
        "b.yaml:12:13: thresholds.strategy: must be one of: fixed, f1-optimal; got 'f1-optimum' "
        "(did you mean 'f1-optimal'?)",
        "b.yaml:13:12: thresholds.default: must be at most 1, got 1.5",
        "b.yaml:16:12: backends.onnx.opset: must be at least 11, got 9",
        "b.yaml:17:20: backends.onnx.parity.atol: must be greater than 0, got 0",
        "b.yaml:18:25: backends.tensorrt.precision: must be one of: fp32, fp16, int8; got 'fp8'",
    ]


def test_const_pattern_and_list_problems(write: Write) -> None:
    text = edit("apiVersion: modelkiln/v1", "apiVersion: modelkiln/v2")
    text = edit("name: registry-v3", "name: Registry_V3", text)
    text = edit("opset: 17", "quantize: {op_types: [MatMul, Gemm, MatMul]}", text)
    text += "backends_extra_never_close: 1\n"
    lines = problems(write("b.yaml", text))
    assert lines[:3] == [
        "b.yaml:1:13: apiVersion: must be 'modelkiln/v1', got 'modelkiln/v2'",
        "b.yaml:3:7: name: 'Registry_V3' does not match ^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$ "
        "(Bundle name, used in task names and output paths: lowercase letters, digits and hyphens, "
        "1 to 64 characters, starting and ending with a letter or digit)",
        "b.yaml:16:41: backends.onnx.quantize.op_types[2]: duplicate item 'MatMul' (list each item once)",
    ]
    assert len(lines) == 4 and lines[3].startswith("b.yaml:17:1: backends_extra_never_close: unknown key")


def test_empty_backends_and_metadata_values(write: Write) -> None:
    text = edit("backends:\n  onnx:\n    opset: 17\n", "backends: {}\nmetadata:\n  owner: ml-platform\n  tags: [a]\n")
    assert problems(write("b.yaml", text)) == [
        "b.yaml:14:11: backends: must have at least 1 key, got 0 (add one of: pytorch, onnx, tensorrt)",
        "b.yaml:17:9: metadata.tags: expected string, number or boolean, got a list",
    ]


def test_f1_optimal_requires_calibration(write: Write) -> None:
    path = write("b.yaml", edit("strategy: fixed", "strategy: f1-optimal"))
    assert problems(path) == [
        "b.yaml:11:1: thresholds: missing required key 'calibration' (required when strategy is 'f1-optimal')",
    ]
    ok = write("ok.yaml", edit("strategy: fixed", "strategy: f1-optimal\n  calibration: cal.jsonl"))
    assert load_document(ok).data["thresholds"]["calibration"] == "cal.jsonl"


def test_duplicate_key_names_first_line_and_schema_still_runs(write: Write) -> None:
    text = edit("  default: 0.5\n", "  default: 0.5\n  strategy: f1-optimal\n")
    text = edit("opset: 17", "opset: latest", text)
    assert problems(write("b.yaml", text)) == [
        "b.yaml:14:3: thresholds.strategy: duplicate key 'strategy', first defined on line 12 "
        "(remove one of them; the first value is kept)",
        "b.yaml:17:12: backends.onnx.opset: expected integer, got 'latest'",
    ]


def test_forbidden_tags_never_construct(write: Write) -> None:
    text = edit("checkpoint: ckpt", "checkpoint: !!python/object/apply:os.system ['touch pwned']")
    text = edit("order: labels/order.json", "order: !include labels/order.json", text)
    text = edit("opset: 17", "opset: !!int seventeen", text)
    text += "metadata: !!set {a, b}\n"
    plain = "only plain YAML is accepted: text, numbers, booleans, null, lists and mappings"
    assert problems(write("b.yaml", text)) == [
        f"b.yaml:6:15: source.checkpoint: tag !!python/object/apply:os.system is not allowed ({plain})",
        f"b.yaml:9:10: labels.order: tag !include is not allowed ({plain})",
        "b.yaml:16:12: backends.onnx.opset: 'seventeen' is not a valid !!int value (fix the value or drop the tag)",
        f"b.yaml:17:11: metadata: tag !!set is not allowed ({plain})",
    ]
    assert not Path("pwned").exists()


def test_standard_tags_are_fine(write: Write) -> None:
    text = edit('version: "3.0.0"', "version: !!str 3.0")
    text = edit("opset: 17", "opset: !!int 17", text)
    doc = load_document(write("b.yaml", text))
    assert doc.data["version"] == "3.0" and doc.data["backends"]["onnx"]["opset"] == 17


def test_anchor_and_alias_are_refused(write: Write) -> None:
    text = edit("  order: labels/order.json\n  fields: labels/fields.json\n",
                "  order: &lbl labels/order.json\n  fields: *lbl\n")
    hint = "anchors and aliases are not supported"
    assert problems(write("b.yaml", text)) == [
        f"b.yaml:9:10: labels.order: anchor &lbl is not allowed (write values out in full; {hint})",
        f"b.yaml:10:11: labels.fields: alias *lbl is not allowed (write the value out in full; {hint})",
    ]


def test_alias_bomb_is_refused_quickly(write: Write) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    found = problems(write("bomb.yaml", "\n".join(lines) + "\n"))
    assert len(found) == 12 + 11 * 10  # each anchor and each alias, nothing expanded
    assert found[0] == ("bomb.yaml:1:5: a0: anchor &a0 is not allowed "
                        "(write values out in full; anchors and aliases are not supported)")


def test_problems_per_file_are_capped(write: Write) -> None:
    text = "a: &a 1\nb:\n" + "  - *a\n" * 300
    found = problems(write("b.yaml", text))
    assert len(found) == 201
    assert found[-2:] == [
        "b.yaml:201:5: b[198]: alias *a is not allowed "
        "(write the value out in full; anchors and aliases are not supported)",
        "b.yaml:202:5: <document>: stopped reading after 200 problems (fix those first)",
    ]


def test_deep_nesting_is_refused(write: Write) -> None:
    found = problems(write("b.yaml", "a: " + "[" * 100_000 + "]" * 100_000 + "\n"))
    assert found == [f"b.yaml:1:53: a{'[0]' * 49}: nested more than 50 levels deep "
                     "(a spec needs a handful of levels; flatten the structure)"]


def test_syntax_error_has_line_and_col(write: Write) -> None:
    text = edit("  task: multi-label-classification", '  task: "multi-label-classification')
    assert problems(write("b.yaml", text)) == [
        "b.yaml:17:1: source.task: invalid YAML: found unexpected end of stream "
        "(while scanning a quoted scalar that starts at line 7)",
    ]
    assert problems(write("c.yaml", "name: a: b\n")) == [
        "c.yaml:1:8: <document>: invalid YAML: mapping values are not allowed in this context",
    ]


def test_oversized_file_is_refused_before_reading(write: Write) -> None:
    path = write("big.yaml", b"\xff" * (1024 * 1024 + 1))  # not UTF-8 either: proves it was not read
    assert problems(path) == [
        "big.yaml:1:1: <document>: file is 1048577 bytes, over the 1 MiB limit for a spec "
        "(keep large data in separate files that the spec points to)",
    ]


def test_not_utf8(write: Write) -> None:
    path = write("b.yaml", BASE.encode().replace(b"name: registry-v3", b"name: r\xe9gistry"))
    assert problems(path) == ["b.yaml:3:8: <document>: file is not valid UTF-8 (byte 0xe9) (save the file as UTF-8)"]


@pytest.mark.parametrize(("content", "expected"), [
    ("- apiVersion: modelkiln/v1\n",
     "top level must be a mapping, got a list (write `key: value` lines at the top level)"),
    ("just text\n", "top level must be a mapping, got 'just text' (write `key: value` lines at the top level)"),
    ("# only a comment\n", "file is empty; expected a mapping of keys to values"),
    ("", "file is empty; expected a mapping of keys to values"),
])
def test_top_level_must_be_a_mapping(write: Write, content: str, expected: str) -> None:
    assert problems(write("b.yaml", content)) == [f"b.yaml:1:1: <document>: {expected}"]


def test_second_document_and_non_finite_numbers(write: Write) -> None:
    assert problems(write("b.yaml", BASE + "---\nkind: Bundle\n")) == [
        "b.yaml:17:1: <document>: found a second YAML document (`---`); a spec is one document "
        "(split it into separate files)",
    ]
    assert problems(write("c.yaml", edit("default: 0.5", "default: .nan"))) == [
        "c.yaml:13:12: thresholds.default: '.nan' is not a finite number (JSON has no infinity or NaN; write a number)",
    ]


def test_missing_file(workdir: Path) -> None:
    assert problems(Path("nope.yaml")) == [
        "nope.yaml:1:1: <document>: cannot read file: No such file or directory (check the path)",
    ]


def test_problems_of_two_files_are_sorted_together(write: Write) -> None:
    b = write("bundles/b.yaml", edit("opset: 17", "opsett: 17").replace("kind: Bundle", "kind: bundle"))
    a = write("bundles/a.yaml", edit("default: 0.5", "default: high"))
    with pytest.raises(SpecError) as info:
        load_documents([b, a])
    assert str(info.value) == "\n".join([
        "3 problems found:",
        "bundles/a.yaml:13:12: thresholds.default: expected number, got 'high'",
        "bundles/b.yaml:2:7: kind: must be 'Bundle', got 'bundle'",
        "bundles/b.yaml:16:5: backends.onnx.opsett: unknown key 'opsett' (did you mean 'opset'?)",
    ])
