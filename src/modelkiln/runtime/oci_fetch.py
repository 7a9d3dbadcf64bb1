"""The bootstrap's OCI source: fetch a bundle published as a model artifact from a registry.

`bootstrap()` here is what `modelkiln.runtime.bootstrap` names: when MODEL_BUNDLE_OCI_REF_<BACKEND>
(or MODEL_BUNDLE_OCI_REF) is set and no S3/file URI is, the bundle comes from the OCI artifact
`HOST/REPO:TAG` or `HOST/REPO@sha256:...`; otherwise the S3/file bootstrap runs unchanged.

Verified the same way as a tarball, then kept the same way (versions/, record, `current` swap):
- the manifest is fetched by digest where the reference pins one (bytes must hash to it);
- it must be a modelkiln model artifact for MODEL_BACKEND, every layer's `filepath` a safe
  relative name, at most once, within the host's KILN_EXTRACT_* limits;
- the bundle's own manifest.json layer must have the digest the artifact's annotations name, and
  list exactly the other layers, each with the layer's size and sha256;
- with REGISTRY_TRUSTED_KEYS set, the signature attached to the artifact (a referrer, or the
  `sha256-<hex>.sig` tag) must verify against the bundle manifest layer with a trusted key and
  name this bundle and version (oci_signature.py), before any other layer is fetched, the
  cache is reused or anything is unpacked; the checks above then tie every file to it;
- every layer is hashed while it streams in and refused on a mismatch, into a fresh directory
  that is renamed into place only when complete; the artifact digest plays the part of the
  tarball's sha256 in the cache record, so a restart on the same digest downloads one manifest;
- the whole fetch ends within REGISTRY_FETCH_TIMEOUT seconds (default 900), however slowly the
  registry answers, so a serving host starts on its previous `current` instead of waiting on a
  stalled registry; no reply is held in memory past a small limit (transport/oci_bounds.py);
- a manifest of the wrong shape, a layer path another one needs as a directory, or a malformed
  URL from the registry is one `kiln:` line blaming the artifact or the registry.

`verify_dir` re-hashes an unpacked bundle against its manifest.json: `python3 -m
modelkiln.runtime verify DIR`, which the serving image's entrypoint runs with REGISTRY_VERIFY=full.
"""
from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from .. import signing, transport
from ..artifacts import manifest as mf
from ..artifacts.extract_limits import Limits
from ..artifacts.oci import media
from ..backends import backends
from ..errors import KilnError, PublishError
from ..transport.oci import Reference, Registry
from ..transport.oci_bounds import Deadline, loads_object, seconds_from_env
from ..transport.oci_pull import descriptor, descriptors
from . import oci_signature
from .bootstrap import Runtime, resolve_paths
from .bootstrap import bootstrap as tarball_bootstrap
from .versions import (
    VERSION,
    Slot,
    full_verify,
    installing,
    is_cached,
    locked,
    point_current,
    runtime_base,
)

OCI_ENV = "MODEL_BUNDLE_OCI_REF"
FETCH_TIMEOUT_ENV = "REGISTRY_FETCH_TIMEOUT"
FETCH_SECONDS = 900.0  # the whole fetch: manifest, signature and every layer
_SAFE = re.compile(r"^(?!/)(?!.*//)[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*$")


def oci_env(backend: str) -> str:
    return f"{OCI_ENV}_{backend.upper()}"


def bootstrap(env: Mapping[str, str] | None = None,
              progress: transport.Progress | None = None, *, verify: str | None = None,
              settings: transport.TransferSettings = transport.DEFAULT) -> Runtime:
    """The bundle from an OCI reference when one is set (and no S3/file URI), else from S3/file."""
    env = os.environ if env is None else env
    backend = (env.get("MODEL_BACKEND") or "").strip().lower()
    ref = (env.get(oci_env(backend)) or env.get(OCI_ENV) or "").strip()
    installed = backends()  # modelkiln's own and installed plug-ins' (modelkiln.backends)
    if backend not in installed or not ref or (env.get(installed[backend].URI_ENV) or "").strip():
        return tarball_bootstrap(env, progress, verify=verify, settings=settings)
    policy = signing.policy_from_env(env)  # REGISTRY_TRUSTED_KEYS: signed artifacts only
    full = full_verify(verify, env)
    limits = Limits.from_env(env)
    seconds = seconds_from_env(env, FETCH_TIMEOUT_ENV, FETCH_SECONDS)
    base = runtime_base(env, backend)
    with locked(base):  # the clock starts once this host's earlier bootstrap is done
        return fetch(Reference.parse(ref), backend, base, full, progress, limits, policy,
                     deadline=Deadline.after(seconds, FETCH_TIMEOUT_ENV))


def _layers(doc: dict[str, Any], origin: str, limits: Limits) -> dict[str, media.Descriptor]:
    """filepath -> layer descriptor, refusing unsafe, duplicate, clashing or oversized content."""
    out: dict[str, media.Descriptor] = {}
    total = 0
    for i, raw in enumerate(descriptors(doc, "layers", origin)):
        d = descriptor(raw, f"{origin} layer {i}")
        path = d.annotation(media.FILEPATH) or ""
        if not _SAFE.match(path) or {".", ".."} & set(path.split("/")) or path in out:
            raise PublishError(f"{origin}: layer {i} names {path[:200]!r}, not a safe relative "
                               "file path used once; refusing the artifact")
        out[path] = d
        total += d.size
    _refuse_clashes(out, origin)
    if len(out) > limits.max_files or total > limits.max_bytes:
        raise PublishError(f"{origin}: {len(out)} files / {total} bytes exceed this host's limits "
                           f"({limits.max_files} files / {limits.max_bytes} bytes; raise "
                           "KILN_EXTRACT_MAX_FILES / KILN_EXTRACT_MAX_BYTES if intended)")
    return out


def _refuse_clashes(paths: dict[str, media.Descriptor], origin: str) -> None:
    """Refuse a file path that another one needs as a directory (`zz` and `zz/x`): the artifact
    cannot be laid out as files, whatever the disk it is unpacked on."""
    for path in sorted(paths):
        parts = path.split("/")
        for n in range(1, len(parts)):
            if (parent := "/".join(parts[:n])) in paths:
                raise PublishError(f"{origin}: layers {parent!r} and {path[:200]!r} clash (one "
                                   "is a file, the other needs it as a directory); refusing the "
                                   "artifact")


def _bundle_manifest(reg: Registry, ref: Reference, doc: dict[str, Any],
                     layers: dict[str, media.Descriptor], backend: str,
                     origin: str) -> tuple[bytes, mf.BundleManifest]:
    """The bundle's manifest.json layer, checked against the annotations and the other layers."""
    notes = doc.get("annotations") or {}
    if not isinstance(notes, dict):
        raise PublishError(f"{origin}: 'annotations' is not a JSON object; refusing the artifact")
    if doc.get("artifactType") != media.MODEL_ARTIFACT or mf.MANIFEST not in layers:
        raise PublishError(f"{origin}: not a modelkiln model artifact (artifactType "
                           f"{doc.get('artifactType')!r}); point {OCI_ENV} at one `kiln publish` "
                           "pushed")
    if notes.get(media.BUNDLE_BACKEND) != backend:
        raise KilnError(f"{origin}: a {notes.get(media.BUNDLE_BACKEND)!r} bundle, but "
                        f"MODEL_BACKEND={backend}; point {oci_env(backend)} at the {backend} one")
    desc = layers[mf.MANIFEST]
    if desc.digest != notes.get(media.BUNDLE_MANIFEST) or desc.size > 16 << 20:
        raise PublishError(f"{origin}: the bundle manifest layer is not the one the artifact's "
                           "annotations name; refusing it")
    buf = io.BytesIO()
    reg.get_blob(ref.repository, desc.digest, desc.size, buf)
    data = buf.getvalue()
    try:
        inner = mf.loads(data, f"{origin} {mf.MANIFEST}")
    except RecursionError:
        raise PublishError(f"{origin}: its {mf.MANIFEST} layer is nested too deeply to read; "
                           "refusing the artifact") from None
    listed = {f["path"]: f for f in inner["files"]}
    if set(listed) != set(layers) - {mf.MANIFEST}:
        raise PublishError(f"{origin}: layers and the bundle manifest list different files; "
                           "refusing the artifact")
    for path, f in listed.items():
        if layers[path].digest != "sha256:" + f["sha256"] or layers[path].size != f["size"]:
            raise PublishError(f"{origin}: layer {path} differs from the bundle manifest's entry; "
                               "refusing the artifact")
    return data, inner


def fetch(ref: Reference, backend: str, base: Path, full: bool,
          progress: transport.Progress | None, limits: Limits,
          policy: signing.Policy | None = None, *, deadline: Deadline | None = None) -> Runtime:
    """Fetch, check and swap in the artifact `ref` (under the runtime dir's lock).

    With trusted keys in `policy`, the artifact's signature is checked against its bundle
    manifest layer (the one small layer read so far) before the cache is consulted or any other
    layer is fetched. Every request, the signature's and the layers' included, ends by
    `deadline`; past it the fetch is one PublishError and `current` is left as it was."""
    reg = Registry(ref.host, deadline=deadline)
    try:
        data, _media, digest = reg.get_manifest(ref.repository, ref.ref)
        origin = f"{ref.host}/{ref.repository}@{digest}"
        doc = loads_object(data, origin)
        layers = _layers(doc, origin, limits)
        raw, inner = _bundle_manifest(reg, ref, doc, layers, backend, origin)
        if policy is not None and policy.required:
            oci_signature.verify(reg, ref, digest, raw, policy, origin)
        version = inner["version"]
        if not VERSION.fullmatch(version):
            raise PublishError(f"{origin}: version {version[:60]!r} is not a usable version name")
        sha = digest.split(":", 1)[1]
        slot = Slot.of(base, version, sha)
        published = cast(mf.PublishedManifest, {**inner, "archive": {
            "path": str(ref.with_digest(digest)), "size": len(data), "sha256": sha}})
        downloaded = False
        if not is_cached(slot, sha, published, full):
            _install(reg, ref, layers, raw, slot, sha, version, progress)
            downloaded = True
    finally:
        reg.close()
    paths = resolve_paths(slot.directory, backend)
    point_current(base, slot.vid)
    return Runtime(backend=backend, version=version, directory=slot.directory,
                   archive_sha256=sha, downloaded=downloaded, paths=paths)


def _install(reg: Registry, ref: Reference, layers: dict[str, media.Descriptor], raw: bytes,
             slot: Slot, sha: str, version: str, progress: transport.Progress | None) -> None:
    """Stream every layer (hashed on the way) into a fresh tree, then swap it into the slot."""
    with installing(slot, sha, version) as staging:
        for path, desc in sorted(layers.items()):
            dest = staging.tree / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            if path == mf.MANIFEST:
                dest.write_bytes(raw)
                continue
            with open(dest, "xb") as out:
                reg.get_blob(ref.repository, desc.digest, desc.size, out, progress)


def verify_dir(directory: Path) -> list[str]:
    """Problems of an unpacked bundle against its own manifest.json (re-reads every byte)."""
    inner = mf.load(directory / mf.MANIFEST)
    return [f"{c.path}: {c.kind}" for c in mf.compare_tree(directory, inner)
            if c.path != mf.MANIFEST]

