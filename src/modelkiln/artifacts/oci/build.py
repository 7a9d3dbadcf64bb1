"""The two things modelkiln writes into an OCI layout: the model artifact and the serving image.

Model artifact (CNCF ModelPack): one `.raw` layer per bundle file, so the layer *is* the file
(weights stay uncompressed, a pull is a copy, and the layer digest is the sha256 the bundle
manifest records); `org.cncf.model.filepath` names where it goes. Weight files get the weight
media type, the model card the doc type, everything else (config, tokenizer, labels, thresholds,
the bundle manifest) the weight-config type.

Serving image: the base image's config (platform, PATH, ...) extended with our layers' diff_ids,
the bootstrap's `REGISTRY_*` environment, our entrypoint and labels. Times are the epoch.
"""
from __future__ import annotations

from typing import Any

from .. import names
from ..fileref import FileRef
from . import media
from .layout import OciLayout

EPOCH = "1970-01-01T00:00:00Z"
WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx_data", ".onnx.data", ".bin")


BundleFile = FileRef  # one file of the bundle: its path inside the bundle, size and sha256


def file_media_type(path: str) -> str:
    if path.endswith(WEIGHT_SUFFIXES):
        return media.MODEL_WEIGHT_RAW
    if path in (names.MODEL_CARD, names.CARD_CHART):
        return media.MODEL_DOC_RAW
    return media.MODEL_WEIGHT_CONFIG_RAW


def is_weight(path: str) -> bool:
    return file_media_type(path) == media.MODEL_WEIGHT_RAW


def model_artifact(layout: OciLayout, files: list[BundleFile], *, name: str, version: str,
                   backend: str, description: str, annotations: dict[str, str],
                   model_format: str | None = None) -> media.Descriptor:
    """Write the artifact's config and manifest (its file blobs must already be in `layout`);
    return the manifest's descriptor. `model_format`: what the config records as the model's
    format (the backend's FORMAT; its name when not given)."""
    ordered = sorted(files, key=lambda f: f.path)
    layers = [media.Descriptor(file_media_type(f.path), f.digest, f.size,
                               ((media.FILEPATH, f.path),)) for f in ordered]
    about: dict[str, Any] = {"name": name, "version": version}
    if description:
        about["description"] = description
    if annotations.get(media.REVISION):
        about["revision"] = annotations[media.REVISION]
    config = {"descriptor": about, "config": {"format": model_format or backend},
              "modelfs": {"type": "layers", "diffIds": [f.digest for f in ordered]}}
    config_desc = layout.put_bytes(media.canonical(config), media.MODEL_CONFIG)
    data = media.manifest_bytes(config_desc, layers, annotations, media.MODEL_ARTIFACT)
    return layout.put_bytes(data, media.MANIFEST)


def image_config(base: dict[str, Any] | None, platform: str, diff_ids: list[str],
                 history: list[str], env: dict[str, str], entrypoint: list[str],
                 labels: dict[str, str], workdir: str) -> bytes:
    """The image config JSON: the base's (if any) with our layers, environment and entrypoint.

    The base's Cmd is dropped (ours is the entrypoint; a command is given at run time) and its
    Env is kept, ours overriding same-named variables."""
    os_name, _, arch = platform.partition("/")
    arch, _, variant = arch.partition("/")
    cfg: dict[str, Any] = dict(base or {})
    inner: dict[str, Any] = dict(cfg.get("config") or {})
    merged = dict(e.split("=", 1) for e in inner.get("Env") or [] if "=" in e)
    merged.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    merged.update(env)
    inner.update({"Env": [f"{k}={v}" for k, v in merged.items()], "Entrypoint": entrypoint,
                  "WorkingDir": workdir,
                  "Labels": {**(inner.get("Labels") or {}), **labels}})
    inner.pop("Cmd", None)
    rootfs = dict(cfg.get("rootfs") or {"type": "layers", "diff_ids": []})
    cfg.update({
        "architecture": cfg.get("architecture") or arch, "os": cfg.get("os") or os_name,
        "config": inner,
        "rootfs": {"type": "layers", "diff_ids": [*rootfs.get("diff_ids", []), *diff_ids]},
        "history": [*(cfg.get("history") or []),
                    *({"created": EPOCH, "created_by": h, "comment": "modelkiln"}
                      for h in history)],
    })
    if variant and not base:
        cfg["variant"] = variant
    cfg["created"] = EPOCH  # a fixed time: tools want one, reproducibility forbids a real one
    return media.canonical(cfg)
