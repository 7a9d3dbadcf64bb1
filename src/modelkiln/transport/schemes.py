"""One registry of URL schemes: which module moves bytes for s3://, file:// or a plug-in's scheme.

Publishing (`kiln publish --to`), the action cache, the runtime fetch and sources all ask here
instead of comparing scheme names, so a new scheme is one module registered in the
`modelkiln.transports` entry-point group under its scheme name (modelkiln's own `file` and `s3`
register the same way; see modelkiln.plugins). An entry named `<scheme>+<part>` (e.g.
`s3+source`) adds a capability to a scheme from another module, for a package above the
transport layer (sources) or a third party; the first entry of a scheme offering a capability
serves it. A transport module offers one or more capabilities, each a module-level function:

    open_location(uri, settings) -> Location   a directory of objects (transport.objects): the
                                               conditional writes, HEADs, checked reads and
                                               listings publishing, the cache and the runtime use
    source_reader() -> object                  a source reader (sources.scheme.Reader: resolve a
                                               URI to locked files, stream one); typed there
    local_path(uri) -> Path                    the path on this machine the URI names, for a
                                               scheme whose objects are local files (file://)

`transport_for(scheme)` gives the module (a KilnError naming the installed schemes when none
serves it); `supports(uri, capability)` answers whether a URI can be used for something without
importing anything heavy (boto3 is imported only when an s3:// location is opened).
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Protocol, cast

from .. import plugins
from ..errors import KilnError
from . import bucket, local
from .objects import Location
from .s3 import DEFAULT, TransferSettings
from .uris import scheme_of

OPEN_LOCATION, SOURCE_READER, LOCAL_PATH = "open_location", "source_reader", "local_path"


class Transport(Protocol):
    """What a scheme module offers for publishing, the cache and the runtime. (`source_reader`
    is an optional second capability, typed by the sources package.)"""

    def open_location(self, uri: str, settings: TransferSettings = ..., /) -> Location: ...


BUILTIN_TRANSPORTS: dict[str, Transport] = {"file": local, "s3": bucket}


def transports() -> dict[str, object]:
    """entry name (`scheme` or `scheme+part`) -> its module, for every transport that loaded."""
    return plugins.loaded(plugins.TRANSPORTS, BUILTIN_TRANSPORTS)


def _scheme(entry: str) -> str:
    return entry.split("+", 1)[0].lower()


def transport_for(scheme: str, capability: str = OPEN_LOCATION) -> Any:
    """The module that serves `scheme` with `capability`, or a KilnError that lists those that do."""
    scheme = scheme.lower()
    entries = {n: t for n, t in transports().items() if _scheme(n) == scheme}
    for t in entries.values():
        if callable(getattr(t, capability, None)):
            return t
    found = entries or None
    able = schemes(capability)
    near = difflib.get_close_matches(scheme, able, n=1)
    hint = f"did you mean {near[0]}://? " if near else ""
    what = "is not an installed transport" if found is None else f"has no {capability}"
    raise KilnError(f"{scheme}://: {what} ({hint}installed: "
                    f"{', '.join(f'{s}://' for s in able) or 'none'}; `kiln plugins` lists them)")


def schemes(capability: str = OPEN_LOCATION) -> tuple[str, ...]:
    """The installed schemes that offer `capability`, sorted."""
    return tuple(sorted({_scheme(n) for n, t in transports().items()
                         if callable(getattr(t, capability, None))}))


def supports(uri: str, capability: str = OPEN_LOCATION) -> bool:
    """Does an installed transport serve this URI's scheme with `capability`? A built-in
    scheme is answered without loading the plug-ins (`kiln build`'s no-op stays fast)."""
    scheme = scheme_of(uri)
    if callable(getattr(BUILTIN_TRANSPORTS.get(scheme), capability, None)):
        return True
    return scheme in schemes(capability)


def open_location(uri: str, settings: TransferSettings = DEFAULT, client: Any = None) -> Location:
    """The Location `uri` names, from the transport registered for its scheme (plain paths are
    file://). `client`: an S3 client to reuse (s3:// only)."""
    scheme = scheme_of(uri)
    if scheme == "s3" and client is not None:
        return bucket.open_location(uri, settings, client)
    return cast(Location, transport_for(scheme).open_location(uri, settings))


def source_reader(scheme: str) -> object:
    """The source reader of `scheme` (sources.scheme.Reader; the sources package types it)."""
    return transport_for(scheme, SOURCE_READER).source_reader()


def is_local(uri: str) -> bool:
    """Are the URI's objects files on this machine (its transport offers `local_path`)? A
    built-in scheme is answered without loading the plug-ins."""
    module = BUILTIN_TRANSPORTS.get(scheme_of(uri))
    if module is not None:
        return callable(getattr(module, LOCAL_PATH, None))
    return supports(uri, LOCAL_PATH)


def local_path_of(uri: str) -> Path | None:
    """The path on this machine `uri` names when its scheme's objects are local files (file://,
    plain paths: the transport offers `local_path`), else None: the bytes are elsewhere, fetch
    them through `open_location`. A KilnError for a file:// URI naming another host."""
    scheme = scheme_of(uri)
    module: object = BUILTIN_TRANSPORTS.get(scheme)
    if module is None:
        try:
            module = transport_for(scheme, LOCAL_PATH)
        except KilnError:
            return None
    to_path = getattr(module, LOCAL_PATH, None)
    return cast(Path, to_path(uri)) if callable(to_path) else None
