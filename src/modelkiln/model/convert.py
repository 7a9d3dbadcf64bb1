"""Validated plain data -> `Bundle`, with the checks the schema cannot express.

The schema owns shape; this module owns meaning: paths exist and stay inside the project, the label
files agree with each other and with the model's head (model.inputs checks the files), backends that
need one another are enabled together. Every problem is collected (never the first only) and
reported with its file:line:col.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..backends import IMAGE_DEFAULT, backends, image_servable
from ..errors import SpecError
from ..paths import project_root
from . import bundle as m
from . import inputs, kinds
from .checker import Checker as _Checker
from .checker import Data, Document, kind_of

__all__ = ["Document", "check_unique", "to_bundle"]


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


def _enabled(c: _Checker, data: Data) -> dict[str, Data]:
    """name -> spec section of each enabled backend (each installed backend's `enabled` says
    whether its section turns it on; the schema admits installed ones only), in their order;
    one built from another (NEEDS) that is not enabled is a problem."""
    installed, listed = backends(), data["backends"]
    on = {n: listed[n] for n, b in installed.items() if n in listed and b.enabled(listed[n])}
    for name in on:
        for need in installed[name].NEEDS:
            if need not in on:
                c.fail(("backends", name), f"the {name} backend is built from the {need} "
                       f"backend's model, and backends.{need} is not enabled",
                       f"enable backends.{need}, or disable backends.{name}")
    return on


def _onnx(c: _Checker, o: Data | None, default_cal: Path | None) -> m.Onnx | None:
    """The onnx backend's typed section (None: not enabled)."""
    if o is None:
        return None
    q, p = o.get("quantize", "auto"), o.get("parity", {})
    if q == "auto":  # no settings given: the int8 stage searches its fixed list (int8_auto)
        q = {"mode": "auto"}
    qcal = c.path(("backends", "onnx", "quantize", "calibration"), q.get("calibration"), "file")
    if q.get("mode") == "static" and qcal is None and default_cal is None:
        c.fail(("backends", "onnx", "quantize", "mode"), "static quantization needs calibration data",
               "set quantize.calibration or thresholds.calibration")
    if default_cal is None:
        c.fail(("backends", "onnx", "parity"), "parity gates need calibration inputs",
               "set thresholds.calibration (JSONL of text + labels)")
    quant = m.Quantize(q.get("mode", "dynamic"), q.get("weight_type", "int8"),
                       bool(q.get("per_channel", True)), bool(q.get("reduce_range", False)),
                       tuple(q["op_types"]) if "op_types" in q else None, qcal or default_cal,
                       tuple(q.get("exclude_nodes", ())))
    parity = m.Parity(float(p.get("atol", 1e-4)), float(p.get("max_decision_flip_rate", 0.01)),
                      p.get("samples"))
    opset = o.get("opset")
    return m.Onnx(int(opset) if opset is not None else None, quant, parity)


def _tensorrt(c: _Checker, t: Data | None, onnx: m.Onnx | None,
              max_length: int) -> m.TensorRT | None:
    """The tensorrt backend's typed section (None: not enabled; its NEEDS are checked by
    `_enabled`)."""
    if t is None:
        return None
    precision = t.get("precision", "fp16")
    if precision == "int8" and onnx is not None and onnx.quantize.mode != "static":
        c.fail(("backends", "tensorrt", "precision"), "int8 engines are built from a static Q/DQ "
               f"model, and backends.onnx.quantize is {onnx.quantize.mode} (dynamic int8, "
               "MatMulInteger, which TensorRT cannot take)",
               "set backends.onnx.quantize.mode: static, or precision: fp16")
    prof = t.get("profiles", {})
    batch = _trt_range(c, prof, "batch", (1, 8, 32))
    sequence = _trt_range(c, prof, "sequence", (1, max_length, max_length))
    if sequence[2] < max_length:
        c.fail(("backends", "tensorrt", "profiles", "sequence"), f"the longest sequence, "
               f"{sequence[2]}, is shorter than thresholds.max_length ({max_length}), which the "
               "served texts are cut to", f"set profiles.sequence.max to at least {max_length}")
    p = t.get("parity", {})
    parity = m.TrtParity(float(p.get("atol", 0.01)), float(p.get("rtol", 0.01)),
                         float(p.get("max_decision_flip_rate", 0.01)), p.get("samples"))
    return m.TensorRT(precision, t.get("when", "gpu-available"), t.get("workspace_mb"),
                      int(t.get("optimization_level", 3)), batch, sequence,
                      t.get("hardware_compatibility", "none"),
                      bool(t.get("version_compatible", False)),
                      bool(t.get("strict_device_name", False)), parity)


def _trt_range(c: _Checker, prof: Data, what: str,
               default: tuple[int, int, int]) -> tuple[int, int, int]:
    """One profile range (min <= opt <= max), or the default when the spec gives none."""
    r = prof.get(what)
    if r is None:
        return default
    lo, opt, hi = int(r["min"]), int(r["opt"]), int(r["max"])
    if not lo <= opt <= hi:
        c.fail(("backends", "tensorrt", "profiles", what), f"{what} range min {lo}, opt {opt}, "
               f"max {hi} is not ordered", "write it so that min <= opt <= max")
    return lo, opt, hi


def _publish(c: _Checker, data: Data, backends: int) -> m.Publish:
    pub = data.get("publish", {})
    store = pub.get("store")
    target = m.StoreTarget(store["root"], store["agent"]) if store else None
    if target and backends > 1 and "{backend}" not in target.agent:
        c.fail(("publish", "store", "agent"), f"{backends} backends would share the store agent "
               f"'{target.agent}'", f"use agent: \"{target.agent}-{{backend}}\"")
    key = "to" if "to" in pub else "s3"  # publish.to: the scheme-neutral name of publish.s3
    if "to" in pub and "s3" in pub:
        c.fail(("publish", "to"), "publish.to and publish.s3 both name the destination",
               "keep publish.to (publish.s3 is its older name) and remove publish.s3")
    s3 = pub.get(key)
    if s3 and key == "to":
        from ..transport.schemes import schemes, supports

        if not supports(s3):
            c.fail(("publish", "to"), f"{s3.split('://', 1)[0]}:// is not an installed "
                   "transport", f"use one of {', '.join(f'{x}://' for x in schemes())} "
                   "(`kiln plugins` lists them), or install the plug-in that adds it")
    if s3 and backends > 1 and "{backend}" not in s3:
        c.fail(("publish", key), f"{backends} backends would publish to the same prefix",
               "put {backend} in the destination, e.g. s3://bucket/models/{version}/{backend}/")
    oci = pub.get("oci")
    if oci and backends > 1 and "{backend}" not in oci:
        c.fail(("publish", "oci"), f"{backends} backends would push to the same tag",
               "put {backend} in the tag, e.g. registry.example.com/models/x:{version}-{backend}")
    return m.Publish(s3, target, oci)


BASE_HINT = ("name a base with python3, pinned: REGISTRY/REPO@sha256:<digest> (`skopeo inspect "
             "docker://REF` prints the digest), or oci:PATH for a layout made by `kiln base PATH` "
             "(a Debian python3 from Debian's packages)")


def _base(c: _Checker, base: str | None) -> tuple[str, Path | None]:
    """image.base: a digest-pinned registry reference or `oci:PATH[@sha256:...]`."""
    key = ("image", "base")
    if base is None:
        c.fail(("image",), "no base: without one the image has no python3 and "
               "cannot start", BASE_HINT)
        return "", None
    if base.startswith("oci:"):
        where = base[4:].split("@", 1)[0]
        if not where:
            c.fail(key, "oci: needs a layout directory", BASE_HINT)
            return base, None
        if kind_of(c.base / where) == "missing":
            c.fail(key, f"base layout '{where}' does not exist", f"make it with `kiln base "
                   f"{where}` from {c.base.name}/ (mmdebstrap: Debian's python3), or {BASE_HINT}")
            return base, None
        layout = c.path(key, where, "dir")
        if layout is not None and kind_of(layout / "index.json") != "file":
            c.fail(key, f"'{where}' is not an OCI image layout (no index.json)",
                   f"make it with `kiln base {where}`, or {BASE_HINT}")
        return base, layout
    if "@sha256:" not in base:
        c.fail(key, f"base image '{base}' is not pinned by digest", "write it as "
               "REGISTRY/REPO@sha256:<digest> (`skopeo inspect docker://REF` prints the digest) "
               "so two builds cannot get different bases")
    return base, None


def _image(c: _Checker, data: Data, enabled: tuple[str, ...]) -> m.ImageSpec | None:
    """The `image:` section: its backend must be built, its base usable and pinned."""
    img = data.get("image")
    if img is None:
        return None
    backend = img.get("backend", IMAGE_DEFAULT)
    if backend not in enabled:
        c.fail(("image", "backend"), f"the image serves the {backend} bundle, but that backend is "
               "not enabled", f"set image.backend to one of: {', '.join(enabled) or 'none'}")
    base, layout = _base(c, img.get("base"))
    return m.ImageSpec(img["repository"], base, img.get("tag", "{version}-{backend}"), backend,
                       img.get("platform", "linux/amd64"), bool(img.get("push", False)),
                       str(img.get("python", "3.11")), tuple(img.get("packages", ())),
                       img.get("test", "auto"), img.get("libraries", "lock"), layout)


def to_bundle(doc: Document) -> m.Bundle:
    """Build a Bundle from a schema-valid document; raise SpecError listing every problem."""
    data = doc.data
    root = project_root(doc.path)
    c = _Checker(doc, root)
    source, head = inputs.source(c, data)
    kinds.check(c, data)
    embedding = kinds.embedding(c, data, source.checkpoint if "checkpoint" in data["source"] else None)
    generation = kinds.generation(c, data)
    own = embedding or generation
    ner = None
    if own is not None:  # a kind of its own: no labels, no thresholds (the schema says so)
        labels = m.Labels(Path(), Path(), ())
        thresholds = m.Thresholds("fixed", 0.5, (), own.calibration, 1, own.max_length)
    elif data["source"]["task"] == kinds.TOKEN_CLASSIFICATION:  # labels, and no thresholds
        labels = inputs.labels(c, data, head)
        ner = kinds.entities(c, data, labels.names)
        thresholds = m.Thresholds("fixed", 0.5, (), ner.calibration if ner else None, 1,
                                  ner.max_length if ner else 128)
    else:
        labels = inputs.labels(c, data, head)
        thresholds = _thresholds(c, data, labels.names)
    on = _enabled(c, data)
    # the built-ins' typed sections (model.bundle); a plug-in's section stays plain data
    pytorch = on.get("pytorch") is not None
    onnx = _onnx(c, on.get("onnx"), thresholds.calibration)
    tensorrt = _tensorrt(c, on.get("tensorrt"), onnx, thresholds.max_length)
    if not on:
        c.fail(("backends",), "no backend is enabled", "enable backends.pytorch or backends.onnx")
    publish = _publish(c, data, len(on))
    image = _image(c, data, image_servable(tuple(on)))
    reg = data.get("registry", {})
    if c.problems:
        raise SpecError(c.problems)
    return m.Bundle(
        name=data["name"], version=data["version"], description=data.get("description", ""),
        spec_path=c.spec, root=root, source=source, labels=labels,
        thresholds=thresholds, pytorch=pytorch, onnx=onnx, tensorrt=tensorrt, publish=publish,
        enabled=tuple(on),
        registry=m.RegistryInfo(tuple(reg.get("roles", ())), tuple(reg.get("capabilities", ())),
                                reg.get("served_id")),
        metadata=tuple(sorted(data.get("metadata", {}).items())), card=_card(data),
        sections=tuple(sorted((k, json.dumps(v, sort_keys=True, separators=(",", ":")))
                              for k, v in data.items())),
        image=image, embedding=embedding, generation=generation, entities=ner,
    )


def _card(data: Data) -> m.Card:
    card = data.get("card", {})
    return m.Card(card.get("intended_use", ""), card.get("limitations", ""), card.get("license"),
                  tuple(card.get("tags", ())))


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
