"""A corpus of corrupted build inputs, and the in-process runner that judges each one.

Every case spoils one file of a real tiny project (tests/helpers.make_inputs: a trained checkpoint,
its tokenizer, label files, calibration rows) the way a careless user or an attacker would. Each is
wrong, so each must be refused: by `kiln validate` (a spec problem) or by the first build stage that
reads it (a BuildError), in one line that names the file. `judge` runs validation and then the
PyTorch stages in-process through graph.execute, as `doit build` would, and says which it was:
  refused-at-validate | refused-at-build | traceback (anything but a KilnError) | accepted.
Used by tests/stages/test_build_inputs.py (a sample) and bench/reliability/inputs.py (all of them).
"""
from __future__ import annotations

import json
import os
import struct
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelkiln.artifacts import names

Corrupt = Callable[[Path], None]  # spoils the inputs directory of a project's bundle


@dataclass(frozen=True)
class Case:
    name: str
    corrupt: Corrupt


def _write(rel: str, content: str | bytes) -> Corrupt:
    def apply(inputs: Path) -> None:
        target = inputs / rel
        data = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
        target.write_bytes(data)
    return apply


def _edit_json(rel: str, change: Callable[[object], object]) -> Corrupt:
    def apply(inputs: Path) -> None:
        target = inputs / rel
        target.write_text(json.dumps(change(json.loads(target.read_bytes()))))
    return apply


def _replace(rel: str, make: str) -> Corrupt:
    def apply(inputs: Path) -> None:
        target = inputs / rel
        target.unlink()
        if make == "dir":
            target.mkdir()
        elif make == "fifo":
            os.mkfifo(target)
        elif make == "loop":
            os.symlink(target.name, target)
    return apply


def _header(change: Callable[[dict[str, object], int], dict[str, object]]) -> Corrupt:
    """Rewrite model.safetensors' JSON header (the data bytes are kept as they are)."""
    def apply(inputs: Path) -> None:
        target = inputs / "checkpoint" / names.WEIGHTS
        raw = target.read_bytes()
        (length,) = struct.unpack("<Q", raw[:8])
        header, data = json.loads(raw[8:8 + length]), raw[8 + length:]
        new = json.dumps(change(header, len(data))).encode()
        target.write_bytes(struct.pack("<Q", len(new)) + new + data)
    return apply


def _tensors(header: dict[str, object]) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"),
                  key=lambda k: header[k]["data_offsets"][0])  # type: ignore[index]


def _shift_last(by: int) -> Callable[[dict[str, object], int], dict[str, object]]:
    def change(h: dict[str, object], size: int) -> dict[str, object]:
        last = h[_tensors(h)[-1]]
        last["data_offsets"] = [o + by for o in last["data_offsets"]]  # type: ignore[index]
        return h
    return change


def _overlap(h: dict[str, object], size: int) -> dict[str, object]:
    a, b = _tensors(h)[:2]
    h[b]["data_offsets"] = list(h[a]["data_offsets"])  # type: ignore[index]
    h[b]["shape"], h[b]["dtype"] = h[a]["shape"], h[a]["dtype"]  # type: ignore[index]
    return h


def _set(key: str, value: object, which: int = 0) -> Callable[[dict[str, object], int], dict[str, object]]:
    def change(h: dict[str, object], size: int) -> dict[str, object]:
        h[_tensors(h)[which]][key] = value  # type: ignore[index]
        return h
    return change


def _truncate(rel: str, keep: int) -> Corrupt:
    def apply(inputs: Path) -> None:
        target = inputs / rel
        target.write_bytes(target.read_bytes()[:keep])
    return apply


def _calibration(*rows: str | bytes) -> Corrupt:
    """A calibration file whose first row is valid and whose third holds the bad row."""
    def apply(inputs: Path) -> None:
        target = inputs / "calibration.jsonl"
        good = target.read_bytes().splitlines(keepends=True)
        bad = b"".join(r if isinstance(r, bytes) else r.encode("utf-8", "surrogatepass") + b"\n"
                       for r in rows)
        target.write_bytes(b"".join(good[:2]) + bad + b"".join(good[2:]))
    return apply


def _id2label(value: object) -> Callable[[object], object]:
    def change(config: object) -> object:
        assert isinstance(config, dict)
        return {**config, "id2label": value}
    return change


CFG, ORDER, FIELDS = f"checkpoint/{names.CONFIG}", names.LABEL_ORDER, names.LABEL_FIELDS
TOK, DEEP = "checkpoint/tokenizer.json", "[" * 100_000 + "]" * 100_000

CASES: list[Case] = [
    # config.json
    Case("config: a list", _write(CFG, "[1, 2]")),
    Case("config: a string", _write(CFG, '"bert"')),
    Case("config: null", _write(CFG, "null")),
    Case("config: empty file", _write(CFG, "")),
    Case("config: garbage bytes", _write(CFG, bytes(range(256)))),
    Case("config: not UTF-8", _write(CFG, b'{"model_type": "\xff\xfe"}')),
    Case("config: deep nesting", _write(CFG, DEEP)),
    Case("config: truncated", _truncate(CFG, 40)),
    Case("config: id2label a list", _edit_json(CFG, _id2label(["a", "b"]))),
    Case("config: id2label an int", _edit_json(CFG, _id2label(4))),
    Case("config: id2label a string", _edit_json(CFG, _id2label("alpha"))),
    Case("config: id2label with a gap", _edit_json(CFG, _id2label({"0": "alpha", "5": "beta"}))),
    Case("config: problem_type single-label", _edit_json(
        CFG, lambda c: {**c, "problem_type": "single_label_classification"})),  # type: ignore[dict-item]
    Case("config: a directory", _replace(CFG, "dir")),
    Case("config: a FIFO", _replace(CFG, "fifo")),
    # label files
    Case("label order: null", _write(ORDER, "null")),
    Case("label order: an object", _write(ORDER, '{"alpha": 0}')),
    Case("label order: empty list", _write(ORDER, "[]")),
    Case("label order: numbers", _write(ORDER, "[0, 1, 2, 3]")),
    Case("label order: nested lists", _write(ORDER, '[["alpha"], "beta", "gamma", "delta"]')),
    Case("label order: wrong order", _edit_json(ORDER, lambda o: list(reversed(o)))),  # type: ignore[call-overload]
    Case("label order: deep nesting", _write(ORDER, DEEP)),
    Case("label order: symlink loop", _replace(ORDER, "loop")),
    Case("label fields: null", _write(FIELDS, "null")),
    Case("label fields: a list", _write(FIELDS, '["alpha", "beta", "gamma", "delta"]')),
    Case("label fields: a number", _write(FIELDS, "4")),
    Case("label fields: a label missing", _edit_json(FIELDS, lambda f: dict(list(f.items())[1:]))),  # type: ignore[attr-defined]
    Case("label fields: invalid JSON", _write(FIELDS, '{"alpha": {}')),
    # safetensors
    Case("safetensors: last tensor past the end", _header(_shift_last(64))),
    Case("safetensors: offsets past the file", _header(_set("data_offsets", [0, 10**12]))),
    Case("safetensors: overlapping tensors", _header(_overlap)),
    Case("safetensors: negative offset", _header(_set("data_offsets", [-4, 4]))),
    Case("safetensors: shape disagrees with bytes", _header(_set("shape", [3, 3, 3]))),
    Case("safetensors: unknown dtype", _header(_set("dtype", "F128"))),
    Case("safetensors: offsets reversed", _header(_set("data_offsets", [8, 0]))),
    Case("safetensors: header length past the end", lambda i: _patch_length(i, 10**9)),
    Case("safetensors: header not an object", _header(lambda h, s: [h])),  # type: ignore[arg-type,return-value]
    Case("safetensors: truncated data", _truncate(f"checkpoint/{names.WEIGHTS}", 5000)),
    Case("safetensors: 3 bytes", _write(f"checkpoint/{names.WEIGHTS}", b"abc")),
    Case("safetensors: zero length", _write(f"checkpoint/{names.WEIGHTS}", b"")),
    Case("safetensors: tensors renamed", _header(lambda h, s: {
        ("x." + k if k != "__metadata__" else k): v for k, v in h.items()})),
    Case("sharded: index names a missing shard", lambda i: _shard_index(i, "model-00009.safetensors")),
    Case("sharded: index escapes the checkpoint", lambda i: _shard_index(i, "../calibration.jsonl")),
    # calibration rows
    Case("calibration: labels null", _calibration('{"text": "a", "labels": null}')),
    Case("calibration: labels an object", _calibration('{"text": "a", "labels": {"alpha": 1}}')),
    Case("calibration: labels nested lists", _calibration('{"text": "a", "labels": [["alpha"]]}')),
    Case("calibration: labels a string", _calibration('{"text": "a", "labels": "alpha"}')),
    Case("calibration: labels numbers", _calibration('{"text": "a", "labels": [0, 1]}')),
    Case("calibration: unknown label", _calibration('{"text": "a", "labels": ["zeta"]}')),
    Case("calibration: text null", _calibration('{"text": null, "labels": []}')),
    Case("calibration: text a number", _calibration('{"text": 12, "labels": []}')),
    Case("calibration: text missing", _calibration('{"labels": ["alpha"]}')),
    Case("calibration: labels missing", _calibration('{"text": "a"}')),
    Case("calibration: row a list", _calibration('["a", ["alpha"]]')),
    Case("calibration: non-UTF-8 line", _calibration(b'{"text": "caf\xe9", "labels": []}\n')),
    Case("calibration: deep nesting", _calibration('{"text": "a", "labels": ' + DEEP + "}")),
    Case("calibration: invalid JSON", _calibration('{"text": "a", "labels": [}')),
    Case("calibration: only blank lines", _write("calibration.jsonl", "\n\n  \n")),
    Case("calibration: a FIFO", _replace("calibration.jsonl", "fifo")),
    # tokenizer
    Case("tokenizer.json: garbage bytes", _write(TOK, bytes(range(256)) * 4)),
    Case("tokenizer.json: truncated", _truncate(TOK, 300)),
    Case("tokenizer.json: empty object", _write(TOK, "{}")),
    Case("tokenizer.json: a list", _write(TOK, "[]")),
    Case("tokenizer.json: model of an unknown type", _edit_json(
        TOK, lambda t: {**t, "model": {"type": "Nonsense"}})),  # type: ignore[dict-item]
    Case("tokenizer_config.json: garbage", _write("checkpoint/tokenizer_config.json", "{{{")),
]


def _patch_length(inputs: Path, length: int) -> None:
    target = inputs / "checkpoint" / names.WEIGHTS
    raw = target.read_bytes()
    target.write_bytes(struct.pack("<Q", length) + raw[8:])


def _shard_index(inputs: Path, shard: str) -> None:
    ckpt = inputs / "checkpoint"
    header = json.loads((ckpt / names.WEIGHTS).read_bytes()[8:8 + struct.unpack("<Q", (
        ckpt / names.WEIGHTS).read_bytes()[:8])[0]])
    (ckpt / names.WEIGHTS).rename(ckpt / "model-00001.safetensors")
    weight_map = {k: "model-00001.safetensors" for k in header if k != "__metadata__"}
    weight_map[next(iter(weight_map))] = shard
    (ckpt / names.WEIGHTS_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@dataclass(frozen=True)
class Verdict:
    outcome: str  # refused-at-validate | refused-at-build | traceback | accepted
    message: str

    @property
    def one_line(self) -> bool:
        return "\n" not in self.message.strip()


BUILD_STAGES = ("weights", "tokenizer", "labels", "thresholds")


def judge(spec: Path) -> Verdict:
    """Validate `spec`, then run its PyTorch stages in-process (the `doit build` code path)."""
    from modelkiln import api
    from modelkiln.errors import KilnError, SpecError
    from modelkiln.graph.execute import execute
    from modelkiln.graph.plans import plan_bundle, upstream_of

    try:
        bundle = api.validate([spec])[0]
    except SpecError as exc:
        return Verdict("refused-at-validate", "\n".join(map(str, exc.problems)))
    except KilnError as exc:
        return Verdict("refused-at-validate", str(exc))
    except Exception:
        return Verdict("traceback", traceback.format_exc())
    plans = [p for p in plan_bundle(bundle) if p.stage in BUILD_STAGES]
    for plan in plans:
        try:
            execute(plan, bundle, upstream_of(plan, plans))
        except KilnError as exc:
            return Verdict("refused-at-build", str(exc))
        except Exception:
            return Verdict("traceback", traceback.format_exc())
    return Verdict("accepted", "")
