"""doit entry point: every bundles/*.yaml becomes tasks. `doit list --all` shows them.

`doit build:registry-v3` builds one bundle; `doit build:registry-v3 skip=onnx` leaves ONNX out for
this run without touching the PyTorch bundle's up-to-date state; `doit publish to=local` publishes
to the embedded file:// default instead of the specs' S3 prefixes.
"""
import sys
from pathlib import Path

from modelkiln.api import discover, load_bundles_partial
from modelkiln.errors import KilnError
from modelkiln.graph.tasks import doit_namespace, publish_target, skipped_backends

ROOT = Path(__file__).resolve().parent
try:
    # A spec that does not validate gets tasks that fail with its problems; the others build.
    BUNDLES, BROKEN = load_bundles_partial(discover([ROOT / "bundles"]))
    globals().update(doit_namespace(BUNDLES, ROOT, skipped_backends(), publish_target(),
                                    broken=BROKEN))
except KilnError as exc:
    print(f"kiln: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
