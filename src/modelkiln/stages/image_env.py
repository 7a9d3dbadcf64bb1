"""The serving image's runtime environment: a lock file beside the spec -> one deterministic layer.

Per backend the image needs the libraries `predict` loads (onnx: onnxruntime, tokenizers, numpy;
pytorch: torch, transformers, safetensors, tokenizers, numpy), by default at the versions this
build's own gates ran with, so the container answers as the build did. `image.packages` adds
requirements or overrides a default by name.

`kiln image-lock NAME` resolves them once with pip for the image's Python and platform (wheels
only, dependencies included) into `bundles/<name>.image.lock`: a pip requirements file with a
sha256 per wheel, reviewed in pull requests like the spec. Its header records what was asked, so
a spec edit that changes the requirements makes the lock stale, which the image stage refuses
with the command that refreshes it.

The image stage installs the lock with `pip install --no-deps --require-hashes --only-binary
:all: --target` (no compiler, no build step, no pip cache in the result), drops console
scripts, compiles bytecode (hash-checked, so reproducible; only when this Python is the image's
version) and writes the tree under /opt/modelkiln/env as one gzip layer with fixed modes and
times. The layer is kept in `.kiln/oci-cache/` under a key of the lock's bytes, the Python and
the platform: a thresholds or weights edit reuses it without running pip, a lock edit rebuilds it.
pip is driven as a subprocess because it has no supported Python API.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from ..artifacts.atomic import write_bytes
from ..artifacts.digest import sha256_bytes
from ..artifacts.oci import media
from ..artifacts.oci.layers import Entry, Layer, write_layer
from ..artifacts.oci.layout import OciLayout
from ..artifacts.statefile import load_json
from ..backends import BUILTIN_BACKENDS, backends
from ..errors import BuildError, KilnError
from ..model.bundle import Bundle, ImageSpec
from ..paths import Layout
from ..proc import run as run_cmd

ENV_DIR = "/opt/modelkiln/env"
CODE_VERSION = "2"  # 2: bytecode compiled into the layer
LOCK_SUFFIX = ".image.lock"
# each backend names its serving environment's default requirements (modelkiln.backends)
DEFAULTS: dict[str, tuple[str, ...]] = {n: b.IMAGE_PACKAGES for n, b in BUILTIN_BACKENDS.items()
                                        if b.IMAGE_PACKAGES}


def _defaults(backend: str) -> tuple[str, ...]:
    found = backends().get(backend)
    return tuple(found.IMAGE_PACKAGES) if found is not None else ()


ARCH = {"amd64": "x86_64", "arm64": "aarch64"}


def lock_path(bundle: Bundle) -> Path:
    """`bundles/<name>.image.lock`, beside the spec."""
    return bundle.spec_path.with_name(bundle.spec_path.stem + LOCK_SUFFIX)


def _name(requirement: str) -> str:
    cut = min((i for i, ch in enumerate(requirement) if ch in "<>=!~[; @"),
              default=len(requirement))
    return requirement[:cut].strip().lower().replace("_", "-")


# what a task kind's `predict` loads beyond the backend's defaults (runtime/predict.py)
KIND_PACKAGES: dict[str, tuple[str, ...]] = {"image-classification": ("pillow",)}


def requested(img: ImageSpec, task: str | None = None) -> list[str]:
    """What the image's environment asks for: the backend's defaults (and the task kind's,
    KIND_PACKAGES) at this build's versions, then the spec's `image.packages` (an entry
    replaces the default of the same name)."""
    from .base import tool_versions

    defaults = (*_defaults(img.backend), *KIND_PACKAGES.get(task or "", ()))
    wanted = {_name(d): f"{d}=={v}" if v != "absent" else d
              for d, v in tool_versions(*defaults).items()}
    for extra in img.packages:
        wanted[_name(extra)] = extra
    return sorted(wanted.values())


def platform_tags(platform: str) -> list[str]:
    """pip --platform values for a linux/<arch> image on a glibc base (manylinux wheels)."""
    parts = platform.split("/")
    if len(parts) < 2 or parts[0] != "linux" or parts[1] not in ARCH:
        raise KilnError(f"image.platform {platform}: the serving environment is resolved for "
                        f"linux/{' or linux/'.join(ARCH)} only")
    arch = ARCH[parts[1]]
    return [f"manylinux_2_{minor}_{arch}" for minor in range(36, 16, -1)] + \
        [f"manylinux2014_{arch}"]


def _pip_target(img: ImageSpec) -> list[str]:
    py = img.python.replace(".", "")
    args = ["--only-binary=:all:", "--python-version", img.python, "--implementation", "cp",
            "--abi", f"cp{py}", "--disable-pip-version-check"]
    for tag in platform_tags(img.platform):
        args += ["--platform", tag]
    return args


def header(bundle: Bundle, img: ImageSpec) -> str:
    """The lock's first lines: what it was resolved for; compared on every image build."""
    return (f"# modelkiln image lock: {bundle.name} ({img.backend}), python {img.python}, "
            f"{img.platform}\n# requested: {' '.join(requested(img, bundle.source.task))}\n")


def resolve(bundle: Bundle, img: ImageSpec, timeout: float = 900) -> str:
    """Resolve the environment with pip (no install) into the lock's text."""
    with tempfile.TemporaryDirectory(prefix="kiln-lock-") as tmp:
        report = Path(tmp) / "report.json"
        run_cmd([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run",
                 "--ignore-installed", "--target", str(Path(tmp) / "t"), "--report", str(report),
                 *_pip_target(img), *requested(img, bundle.source.task)], timeout=timeout)
        doc = json.loads(report.read_bytes())
    lines = [header(bundle, img), "# written by `kiln image-lock`; install: pip install "
             "--no-deps --require-hashes -r this-file\n"]
    for item in sorted(doc.get("install", []), key=lambda i: i["metadata"]["name"].lower()):
        meta, info = item["metadata"], item.get("download_info", {})
        sha = (info.get("archive_info", {}).get("hashes") or {}).get("sha256")
        if not sha:
            raise BuildError(f"pip gave no sha256 for {meta['name']} {meta['version']}; "
                             "the lock needs one per wheel")
        lines.append(f"{meta['name']}=={meta['version']} \\\n    --hash=sha256:{sha}\n")
    return "".join(lines)


def write_lock(bundle: Bundle) -> Path:
    """`kiln image-lock NAME`: (re)write the bundle's lock file; returns its path."""
    if bundle.image is None:
        raise KilnError(f"{bundle.spec_path.name}: has no image: section, so nothing to lock")
    path = lock_path(bundle)
    write_bytes(path, resolve(bundle, bundle.image).encode(), durable=False)
    return path


def check_lock(bundle: Bundle, img: ImageSpec) -> bytes:
    """The lock's bytes, refused when missing or resolved for other requirements."""
    path = lock_path(bundle)
    try:
        data = path.read_bytes()
    except OSError:
        raise BuildError(f"{path.name}: missing; the serving image installs its libraries from "
                         f"it: run `kiln image-lock {bundle.name}` and commit the file") from None
    if not data.decode(errors="replace").startswith(header(bundle, img)):
        raise BuildError(f"{path.name}: resolved for other requirements than the spec asks "
                         f"({' '.join(requested(img, bundle.source.task))}, "
                         f"python {img.python}, {img.platform}); "
                         f"run `kiln image-lock {bundle.name}` and commit the file")
    return data


def compile_bytecode(target: Path, img: ImageSpec) -> bool:
    """Bytecode for the environment, so a container does not compile numpy and onnxruntime on
    every start (bench_serving: first answer 1.25 -> 0.80 s). Made only by a Python of the
    image's version (the .pyc format is per minor version), with hash-checked invalidation (no
    timestamps: the same sources give the same bytes) and the image's own paths in it."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" != img.python:
        return False  # another Python here: the image compiles on first import, as before
    run_cmd([sys.executable, "-m", "compileall", "-q", "-j", "0", "-d", ENV_DIR,
             "--invalidation-mode", "unchecked-hash", str(target)], timeout=1800)
    return True


def _entries(root: Path) -> list[Entry]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames
                             if not (rel_dir == Path(".") and d == "bin"))  # console scripts
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if path.is_symlink():
                continue
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            out.append(Entry(f"{ENV_DIR.lstrip('/')}/{path.relative_to(root).as_posix()}",
                             path, mode))
    return out


def env_layer(bundle: Bundle, img: ImageSpec, layout: Layout, lay: OciLayout) -> Layer:
    """The environment layer for the lock, from the cache or built once; linked into `lay`."""
    lock = check_lock(bundle, img)
    key = sha256_bytes(media.canonical([CODE_VERSION, img.python, img.platform,
                                        sha256_bytes(lock)]))
    cache = OciLayout(layout.state / "oci-cache")
    cache.init()
    index = layout.state / "oci-cache" / "envs.json"
    known = load_json(index)  # damaged or missing: the layer is built again
    known = known if isinstance(known, dict) else {}
    hit = known.get(key)
    if isinstance(hit, list) and len(hit) == 4 and cache.has(hit[0], hit[2]):
        layer = Layer(*hit)
    else:
        layer = _build(lock, img, cache)
        known[key] = [layer.digest, layer.diff_id, layer.size, layer.media_type]
        write_bytes(index, media.canonical(known), durable=False)
    lay.link(cache.blob_path(layer.digest), layer.digest)
    return layer


def _build(lock: bytes, img: ImageSpec, cache: OciLayout) -> Layer:
    with tempfile.TemporaryDirectory(prefix=".kiln-env-", dir=cache.root) as tmp:
        req = Path(tmp) / "lock.txt"
        req.write_bytes(lock)
        target = Path(tmp) / "env"
        run_cmd([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                 "--require-hashes", "--no-compile", "--target", str(target),
                 *_pip_target(img), "-r", str(req)], timeout=1800)
        compile_bytecode(target, img)
        part = Path(tmp) / "layer.part"
        layer = write_layer(part, _entries(target), gzip=True)
        cache.adopt(part, layer.digest)
    return layer
