"""Spec texts the tests edit, and the type of the `write` fixture (kept out of conftest so test
modules can import them)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

# A small valid spec; the golden tests edit one line of it so line numbers stay easy to check.
BASE = """\
apiVersion: modelkiln/v1
kind: Bundle
name: registry-v3
version: "3.0.0"
source:
  checkpoint: ckpt
  task: multi-label-classification
labels:
  order: labels/order.json
  fields: labels/fields.json
thresholds:
  strategy: fixed
  default: 0.5
backends:
  onnx:
    opset: 17
"""

Write = Callable[..., Path]


def edit(old: str, new: str, base: str = BASE) -> str:
    """BASE with one exact fragment replaced; fails loudly if the fragment is not there."""
    assert base.count(old) == 1, old
    return base.replace(old, new)
