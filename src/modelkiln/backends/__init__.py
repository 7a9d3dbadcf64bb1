"""Backends: what each runtime a bundle is built for adds to the graph, packs, exports and needs.

A backend is one module satisfying `Backend`, registered in the `modelkiln.backends` entry-point
group (modelkiln's own pytorch, onnx and tensorrt register there like a third party's; see
modelkiln.plugins). Validation, planning, the package stage and model card, the serving image
and the runtime (bootstrap, OCI fetch, predict) ask the backend instead of comparing its name
(tests/plugins/test_backend_names.py fails on such a comparison outside this package):

    NAME, DOC        the key under `backends:` in a spec, and one line for `kiln plugins`
    STAGES           the stages it adds to the graph (their tasks carry `backend=NAME`)
    PACKS            (stage, files or None for all) packed into its bundle.tar.gz
    REPORTS          stages whose stamp report goes into the manifest's `parity` section
    GRAPH            the stage whose report names the served graph's inputs (None: the tokenizer's)
    TOOLS            distributions whose versions shape (and are recorded in) its package
    URI_ENV          the runtime's variable naming the published bundle (MODEL_BUNDLE_S3_URI_*)
    MODEL_DIR        whether the runtime exports REGISTRY_MODEL_DIR (a transformers checkpoint)
    EXPORTS          (REGISTRY_* variable, bundle path) the runtime exports, each required
    IMAGE_PACKAGES   the serving image environment's default pip requirements (empty: no image
                     serves it; the image is built for a backend that names some)
    NEEDS            backends it is built from: enabling it without them is a spec error, and
                     skipping one of them (`--skip`) skips it too
    LIBRARY          the library a model card reader loads its model with (`library_name`)
    MODEL_FILE       the bundle file the model card names as its model
    FORMAT           the model format an OCI model artifact's config records
    ENGINES          whether the runtime picks one of the bundle's engines/sm<cc>/ for the host
    enabled(section) whether its spec section turns it on (`enabled: false` turns any off)
    needs_gpu(section)  whether, with this section, it is built only where a GPU is usable

Where the serving app's model is a transformers checkpoint (MODEL_DIR), `predict` runs it with
torch; otherwise it runs the bundle's int8 ONNX model.

A plug-in backend is enabled in a spec like a built-in one (`backends: {toy: {}}`); its section
is plain data its stages read from `bundle.section("backends")`. Kept light: no heavy import, since
the runtime (in the serving image too) reads this table.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, cast

from .. import plugins
from . import onnx, pytorch, tensorrt

Packs = tuple[tuple[str, tuple[str, ...] | None], ...]


class Backend(Protocol):
    @property
    def NAME(self) -> str: ...
    @property
    def DOC(self) -> str: ...
    @property
    def STAGES(self) -> tuple[str, ...]: ...
    @property
    def PACKS(self) -> Packs: ...
    @property
    def REPORTS(self) -> tuple[str, ...]: ...
    @property
    def GRAPH(self) -> str | None: ...
    @property
    def TOOLS(self) -> tuple[str, ...]: ...
    @property
    def URI_ENV(self) -> str: ...
    @property
    def MODEL_DIR(self) -> bool: ...
    @property
    def EXPORTS(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def IMAGE_PACKAGES(self) -> tuple[str, ...]: ...
    @property
    def NEEDS(self) -> tuple[str, ...]: ...
    @property
    def LIBRARY(self) -> str: ...
    @property
    def MODEL_FILE(self) -> str: ...
    @property
    def FORMAT(self) -> str: ...
    @property
    def ENGINES(self) -> bool: ...
    def enabled(self, section: Mapping[str, Any], /) -> bool: ...
    def needs_gpu(self, section: Mapping[str, Any], /) -> bool: ...


BUILTIN_BACKENDS: dict[str, Backend] = {"pytorch": pytorch, "onnx": onnx, "tensorrt": tensorrt}
BUILTIN = tuple(BUILTIN_BACKENDS)  # the order their bundles are listed and built in
IMAGE_DEFAULT = onnx.NAME  # the backend `image:` serves when it names none (the schema's default)


def backends() -> dict[str, Backend]:
    """Every installed backend: the built-ins in their order, then plug-ins by name."""
    found = {n: cast(Backend, b) for n, b in plugins.loaded(plugins.BACKENDS,
                                                            BUILTIN_BACKENDS).items()}
    rank = {n: i for i, n in enumerate(BUILTIN)}
    return {n: found[n] for n in sorted(found, key=lambda n: (rank.get(n, len(rank)), n))}


def backend(name: str) -> Backend:
    """The installed backend `name` (KeyError when none is)."""
    return backends()[name]


def plugin_names() -> tuple[str, ...]:
    """Installed backends other than modelkiln's own."""
    return tuple(n for n in backends() if n not in BUILTIN)


def needed_by(names: frozenset[str]) -> frozenset[str]:
    """`names` and every installed backend built from one of them, however indirectly (what
    skipping `names` skips)."""
    found, out = backends(), set(names)
    while more := {n for n, b in found.items() if n not in out and set(b.NEEDS) & out}:
        out |= more
    return frozenset(out)


def image_servable(names: tuple[str, ...]) -> tuple[str, ...]:
    """Those of `names` a serving image can be built for (their IMAGE_PACKAGES say what it needs)."""
    found = backends()
    return tuple(n for n in names if n in found and found[n].IMAGE_PACKAGES)
