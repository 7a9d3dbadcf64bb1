"""`toymem://NAME/PREFIX/`: an in-memory-like store for tests, kept under $KILN_TOYMEM_DIR so it
outlives one process. It reuses modelkiln's LocalDir for the object semantics (conditional
writes, checked reads) and only names its objects with its own scheme."""
from __future__ import annotations

import os
from pathlib import Path

from modelkiln.transport import DEFAULT, LocalDir, TransferSettings


class ToyMem(LocalDir):
    def __init__(self, uri: str):
        self.toy_uri = uri if uri.endswith("/") else uri + "/"
        super().__init__(Path(os.environ["KILN_TOYMEM_DIR"]) / uri.split("://", 1)[1])

    @property
    def base_uri(self) -> str:
        return self.toy_uri


def open_location(uri: str, settings: TransferSettings = DEFAULT) -> ToyMem:
    return ToyMem(uri)
