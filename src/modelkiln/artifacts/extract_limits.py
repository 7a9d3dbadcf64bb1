"""How much an archive may unpack to, decided by the host that unpacks it.

A published manifest is written by whoever controls the bucket, so the sizes it declares cannot
be what bounds the disk an unpacking takes: a 47 MB archive that honestly declares 10 GiB of
zeros is still a bomb. The host sets the ceilings (with safe defaults, and environment variables
to raise or lower them); the manifest's sizes and a caller's own cap can only tighten them.

    KILN_EXTRACT_MAX_BYTES  total bytes of all files            default 16G (K/M/G/T suffixes)
    KILN_EXTRACT_MAX_FILES  files and directories               default 10000
    KILN_EXTRACT_MAX_RATIO  unpacked bytes per archive byte     default 100 (never below 64 MiB)

Deflate tops out near 1032:1; real bundles (weights barely compress, JSON about 5:1) sit far
below 100:1, and the 64 MiB floor lets a small bundle of text unpack whatever its ratio.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import KilnError

ENV_MAX_BYTES = "KILN_EXTRACT_MAX_BYTES"
ENV_MAX_FILES = "KILN_EXTRACT_MAX_FILES"
ENV_MAX_RATIO = "KILN_EXTRACT_MAX_RATIO"
RATIO_FLOOR = 64 << 20
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"(\d{1,20})\s*(?:([KMGT])(?:i?B)?|B)?", re.IGNORECASE)


@dataclass(frozen=True)
class Limits:
    """Host-side ceilings for one unpacking (see the module doc for the variables)."""

    max_bytes: int = 16 << 30
    max_files: int = 10_000
    max_ratio: int = 100

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        """The defaults, overridden by KILN_EXTRACT_* in `env` (default: os.environ).

        Raises KilnError naming the variable when a value is not a positive number."""
        env = os.environ if env is None else env
        default = cls()
        return cls(max_bytes=_read(env, ENV_MAX_BYTES, default.max_bytes, sized=True),
                   max_files=_read(env, ENV_MAX_FILES, default.max_files, sized=False),
                   max_ratio=_read(env, ENV_MAX_RATIO, default.max_ratio, sized=False))


@dataclass(frozen=True)
class Budget:
    """The tightest of every limit that applies to one archive, and which limit that was."""

    max_bytes: int
    bytes_from: str
    max_files: int
    host_bound: bool  # the byte ceiling is the host's own, so the fix is to raise a variable

    @classmethod
    def of(cls, limits: Limits, archive_size: int, *, declared: int | None = None,
           caller: int | None = None) -> Budget:
        """Tighten the host's `limits` with a manifest's `declared` total and a `caller` cap."""
        ratio_cap = max(RATIO_FLOOR, limits.max_ratio * archive_size)
        candidates = [
            (limits.max_bytes, f"the host's {ENV_MAX_BYTES}", True),
            (ratio_cap, f"{ENV_MAX_RATIO}={limits.max_ratio} times the {archive_size}-byte "
             f"archive, at least {RATIO_FLOOR}", True),
        ]
        if declared is not None:
            candidates.append((declared, "the total the manifest declares", False))
        if caller is not None:
            candidates.append((caller, "the caller's limit", False))
        cap, why, host = min(candidates, key=lambda c: c[0])
        return cls(max_bytes=cap, bytes_from=why, max_files=limits.max_files, host_bound=host)


def _read(env: Mapping[str, str], var: str, default: int, *, sized: bool) -> int:
    text = (env.get(var) or "").strip()
    if not text:
        return default
    match = _SIZE.fullmatch(text) if sized else re.fullmatch(r"\d{1,20}", text)
    value = 0
    if match is not None:
        value = int(match[1]) * _UNITS[(match[2] or "").upper()] if sized else int(text)
    if value <= 0:
        example = "a byte count or a size such as 32G" if sized else "a whole number"
        raise KilnError(f"{var}={text[:40]!r}: not a positive number; set it to {example}, "
                        f"or unset it for the default ({default})")
    return value
