"""`python3 -m modelkiln.runtime verify BUNDLE_DIR`: re-hash an unpacked bundle against its own
manifest.json; exit 0 when every file matches, else name what differs and exit 2 (hash drift).
The serving image's entrypoint runs it when REGISTRY_VERIFY=full; it needs only the standard
library and the light modelkiln package on PYTHONPATH.

`python3 -m modelkiln.runtime predict [BUNDLE_DIR]`: answer JSON lines with the bundle's model
(runtime/predict.py); the serving image's `predict` command. Only this verb loads a model library.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import KilnError
from .oci_fetch import verify_dir

USAGE = ("usage: python3 -m modelkiln.runtime verify BUNDLE_DIR\n"
         "       python3 -m modelkiln.runtime predict [BUNDLE_DIR] < rows.jsonl\n")


def main(argv: list[str]) -> int:
    if argv and argv[0] == "predict":
        from . import predict  # numpy and the model runtime: loaded for this verb only

        return predict.main(argv[1:])
    if len(argv) != 2 or argv[0] != "verify":
        sys.stderr.write(USAGE)
        return 64
    try:
        found = verify_dir(Path(argv[1]))
    except KilnError as exc:
        sys.stderr.write(f"kiln: {exc}\n")
        return exc.exit_code
    if found:
        sys.stderr.write(f"kiln: {argv[1]}: bundle differs from its manifest: {'; '.join(found)}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
