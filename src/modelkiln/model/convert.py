"""Validated plain data -> `Bundle`, with the checks the schema cannot express.

The schema owns shape; this module owns meaning: paths exist and stay inside the project, the label
files agree with each other and with the model's head, backends that need one another are enabled
together. Every problem is collected (never the first only) and reported with its file:line:col.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..artifacts import names as files
from ..errors import Problem, SpecError
from ..paths import project_root
from . import bundle as m

WEIGHT_FILES = (files.WEIGHTS, files.WEIGHTS_INDEX, files.PICKLE_WEIGHTS,
                files.PICKLE_WEIGHTS_INDEX)


KeyPath = tuple[str | int, ...]  # a node in the spec: ("labels", "order"), ("metadata", 0)
Data = Mapping[str, Any]  # schema-valid spec data: shape is the schema's, meaning is ours


class Document(Protocol):
    """What this module needs from a loaded spec (modelkiln.spec.SpecDocument provides it).

    Read-only members, so a frozen dataclass satisfies it; the protocol keeps model/ free of YAML.
    """

    @property
    def path(self) -> Path: ...

    @property
    def data(self) -> Data: ...

    def problem(self, key_path: KeyPath, message: str, hint: str = "", *,
                at_key: bool = False) -> Problem: ...


class _Checker:
    def __init__(self, doc: Document, root: Path):
        self.doc, self.root, self.base = doc, root, doc.path.resolve().parent
        self.problems: list[Problem] = []

    def fail(self, key: KeyPath, message: str, hint: str = "", at_key: bool = False) -> None:
        self.problems.append(self.doc.problem(key, message, hint, at_key=at_key))

    def path(self, key: KeyPath, value: str | None, kind: str) -> Path | None:
        """Resolve a spec path; it must exist, be a `kind` ('file'|'dir') and stay in the project."""
        if value is None:
            return None
        p = (self.base / value).resolve()
        try:
            p.relative_to(self.root)
        except ValueError:
            self.fail(key, f"path '{value}' escapes the project root {self.root}",
                      "keep model inputs inside the repository; use a path relative to the spec")
            return p
        if not p.exists():
            self.fail(key, f"'{value}' does not exist", f"create it, or fix the path (relative to "
                      f"{self.base.name}/); example inputs come from `python -m modelkiln.demo`")
        elif kind == "dir" and not p.is_dir():
            self.fail(key, f"'{value}' is not a directory", "point at the checkpoint directory")
        elif kind == "file" and not p.is_file():
            self.fail(key, f"'{value}' is not a file", "point at a file")
        return p

    def json_file(self, key: KeyPath, path: Path | None) -> Any:
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            self.fail(key, f"'{path.name}' is not valid JSON ({exc})", "fix the file's syntax")
            return None


def _labels(c: _Checker, data: Data, checkpoint: Path | None) -> m.Labels:
    lab = data["labels"]
    order_p = c.path(("labels", "order"), lab["order"], "file")
    fields_p = c.path(("labels", "fields"), lab["fields"], "file")
    order = c.json_file(("labels", "order"), order_p)
    names: tuple[str, ...] = ()
    if order is not None:
        if not (isinstance(order, list) and order and all(isinstance(x, str) for x in order)):
            c.fail(("labels", "order"), "label order must be a non-empty JSON array of strings",
                   'e.g. ["cpt_code", "laterality"]')
        elif len(set(order)) != len(order):
            dups = sorted({x for x in order if order.count(x) > 1})
            c.fail(("labels", "order"), f"duplicate labels {dups}", "each label once")
        else:
            names = tuple(order)
    fields = c.json_file(("labels", "fields"), fields_p)
    if fields is not None and names:
        if not isinstance(fields, dict):
            c.fail(("labels", "fields"), "label fields must be a JSON object keyed by label",
                   '{"label": {...}, ...}')
        elif set(fields) != set(names):
            extra, missing = sorted(set(fields) - set(names)), sorted(set(names) - set(fields))
            c.fail(("labels", "fields"), f"labels differ from labels.order (extra: {extra}, "
                   f"missing: {missing})", "one entry per label in label_order")
    config = c.json_file(("source", "checkpoint"), checkpoint / files.CONFIG) if checkpoint else None
    if config is not None and names:
        id2label = config.get("id2label") or {}
        head = [id2label.get(str(i)) for i in range(len(id2label))]
        if len(head) != len(names):
            c.fail(("labels", "order"), f"{len(names)} labels, but the model's head has "
                   f"{len(head)} outputs", "labels.order must list every output of the model")
        elif head != list(names):
            c.fail(("labels", "order"), f"labels do not match the model's id2label {head}",
                   "list labels in the model's output order (config.json id2label)")
    return m.Labels(order_p or Path(), fields_p or Path(), names)


def _source(c: _Checker, data: Data) -> m.Source:
    src = data["source"]
    ckpt = c.path(("source", "checkpoint"), src["checkpoint"], "dir")
    if ckpt is not None and ckpt.is_dir():
        if not (ckpt / files.CONFIG).is_file():
            c.fail(("source", "checkpoint"), "checkpoint has no config.json",
                   "point at a Hugging Face style checkpoint directory (save_pretrained output)")
        if not any((ckpt / f).is_file() for f in WEIGHT_FILES):
            c.fail(("source", "checkpoint"), "checkpoint has no weights (model.safetensors, "
                   "sharded safetensors or pytorch_model.bin)", "save the model with save_pretrained")
    tok = c.path(("source", "tokenizer"), src.get("tokenizer"), "dir") if "tokenizer" in src else ckpt
    return m.Source(ckpt or Path(), src["task"], tok or Path(), src.get("dtype"))


def _thresholds(c: _Checker, data: Data, names: tuple[str, ...]) -> m.Thresholds:
    t = data["thresholds"]
    values = t.get("values", {})
    for label in sorted(set(values) - set(names)) if names else ():
        c.fail(("thresholds", "values", label), f"unknown label '{label}'",
               f"labels are: {', '.join(names)}", at_key=True)
    cal = c.path(("thresholds", "calibration"), t.get("calibration"), "file")
    return m.Thresholds(t["strategy"], float(t["default"]),
                        tuple(sorted((k, float(v)) for k, v in values.items())), cal,
                        int(t.get("min_support", 1)), int(t.get("max_length", 128)))


def _onnx(c: _Checker, data: Data, default_cal: Path | None) -> m.Onnx | None:
    o = data["backends"].get("onnx")
    if o is None or not o.get("enabled", True):
        return None
    q, p = o.get("quantize", {}), o.get("parity", {})
    qcal = c.path(("backends", "onnx", "quantize", "calibration"), q.get("calibration"), "file")
    if q.get("mode") == "static" and qcal is None and default_cal is None:
        c.fail(("backends", "onnx", "quantize", "mode"), "static quantization needs calibration data",
               "set quantize.calibration or thresholds.calibration")
    if default_cal is None:
        c.fail(("backends", "onnx", "parity"), "parity gates need calibration inputs",
               "set thresholds.calibration (JSONL of text + labels)")
    quant = m.Quantize(q.get("mode", "dynamic"), q.get("weight_type", "int8"),
                       bool(q.get("per_channel", True)), bool(q.get("reduce_range", False)),
                       tuple(q["op_types"]) if "op_types" in q else None, qcal or default_cal)
    parity = m.Parity(float(p.get("atol", 1e-4)), float(p.get("max_decision_flip_rate", 0.01)),
                      p.get("samples"))
    return m.Onnx(int(o.get("opset", 17)), quant, parity)


def _tensorrt(c: _Checker, data: Data, onnx: m.Onnx | None) -> m.TensorRT | None:
    t = data["backends"].get("tensorrt")
    if t is None or not t.get("enabled", True) or t.get("when") == "never":
        return None
    if onnx is None:
        c.fail(("backends", "tensorrt"), "TensorRT engines are built from the ONNX model",
               "enable backends.onnx, or disable backends.tensorrt")
    return m.TensorRT(t.get("precision", "fp16"), t.get("when", "gpu-available"),
                      t.get("workspace_mb"), tuple(sorted(t.get("shapes", {}).items())))


def _publish(c: _Checker, data: Data, backends: int) -> m.Publish:
    pub = data.get("publish", {})
    store = pub.get("store")
    target = m.StoreTarget(store["root"], store["agent"]) if store else None
    if target and backends > 1 and "{backend}" not in target.agent:
        c.fail(("publish", "store", "agent"), f"{backends} backends would share the store agent "
               f"'{target.agent}'", f"use agent: \"{target.agent}-{{backend}}\"")
    s3 = pub.get("s3")
    if s3 and backends > 1 and "{backend}" not in s3:
        c.fail(("publish", "s3"), f"{backends} backends would publish to the same prefix",
               "put {backend} in the destination, e.g. s3://bucket/models/{version}/{backend}/")
    oci = pub.get("oci")
    if oci and backends > 1 and "{backend}" not in oci:
        c.fail(("publish", "oci"), f"{backends} backends would push to the same tag",
               "put {backend} in the tag, e.g. registry.example.com/models/x:{version}-{backend}")
    return m.Publish(s3, target, oci)


def _image(c: _Checker, data: Data, enabled: tuple[str, ...]) -> m.ImageSpec | None:
    """The `image:` section: its backend must be built, its base pinned by digest."""
    img = data.get("image")
    if img is None:
        return None
    backend = img.get("backend", "onnx")
    if backend not in enabled:
        c.fail(("image", "backend"), f"the image serves the {backend} bundle, but that backend is "
               "not enabled", f"set image.backend to one of: {', '.join(enabled) or 'none'}")
    base = img.get("base")
    if base is not None and "@sha256:" not in base:
        c.fail(("image", "base"), f"base image '{base}' is not pinned by digest", "write it as "
               "REGISTRY/REPO@sha256:<digest> (`skopeo inspect docker://REF` prints the digest) "
               "so two builds cannot get different bases")
    return m.ImageSpec(img["repository"], base, img.get("tag", "{version}-{backend}"), backend,
                       img.get("platform", "linux/amd64"), bool(img.get("push", False)))


def to_bundle(doc: Document) -> m.Bundle:
    """Build a Bundle from a schema-valid document; raise SpecError listing every problem."""
    data = doc.data
    root = project_root(doc.path)
    c = _Checker(doc, root)
    source = _source(c, data)
    labels = _labels(c, data, source.checkpoint if source.checkpoint != Path() else None)
    thresholds = _thresholds(c, data, labels.names)
    pytorch = bool(data["backends"].get("pytorch", {}).get("enabled", True)) \
        if "pytorch" in data["backends"] else False
    onnx = _onnx(c, data, thresholds.calibration)
    tensorrt = _tensorrt(c, data, onnx)
    if not pytorch and onnx is None:
        c.fail(("backends",), "no backend is enabled", "enable backends.pytorch or backends.onnx")
    publish = _publish(c, data, int(pytorch) + int(onnx is not None))
    image = _image(c, data, tuple(b for b, on in (("pytorch", pytorch), ("onnx", onnx)) if on))
    reg = data.get("registry", {})
    if c.problems:
        raise SpecError(c.problems)
    return m.Bundle(
        name=data["name"], version=data["version"], description=data.get("description", ""),
        spec_path=doc.path.resolve(), root=root, source=source, labels=labels,
        thresholds=thresholds, pytorch=pytorch, onnx=onnx, tensorrt=tensorrt, publish=publish,
        registry=m.RegistryInfo(tuple(reg.get("roles", ())), tuple(reg.get("capabilities", ())),
                                reg.get("served_id")),
        metadata=tuple(sorted(data.get("metadata", {}).items())),
        sections=tuple(sorted((k, json.dumps(v, sort_keys=True, separators=(",", ":")))
                              for k, v in data.items())),
        image=image,
    )


def check_unique(bundles: Sequence[tuple[Document, m.Bundle]]) -> None:
    """Two specs may not claim one bundle name: their tasks and dist paths would collide."""
    seen: dict[str, Document] = {}
    problems = []
    for doc, b in bundles:
        if b.name in seen:
            first = seen[b.name].path
            problems.append(doc.problem(("name",), f"bundle name '{b.name}' is also used by {first}",
                                        "give each spec its own name"))
        else:
            seen[b.name] = doc
    if problems:
        raise SpecError(problems)
