"""Where the action cache lives and whether this run may write to it.

Precedence, first that is set wins:

    location   --cache URI  >  $KILN_CACHE_URI  >  [tool.modelkiln] cache  >  file://<project>/.kiln/cache
    writes     --cache-write  >  $KILN_CACHE_WRITE (1/0)  >  [tool.modelkiln] cache-write  >  default

The default for writes is the trust rule: the embedded local directory is written (nobody but
this checkout's own builds can put anything there), any cache named explicitly is read-only until
a trusted job asks to write. A pull request job that could write a shared cache could plant
outputs that a later main-branch build restores and publishes (cache poisoning), so CI sets
`KILN_CACHE_WRITE=1` on protected branches only. `off` (or `cache = false`) turns the cache off.
"""
from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import KilnError
from ..transport.schemes import supports

URI_ENV = "KILN_CACHE_URI"
WRITE_ENV = "KILN_CACHE_WRITE"
OFF = ("off", "false", "no", "none", "0")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class CacheConfig:
    """The cache this run uses: `uri` None means no cache at all."""

    uri: str | None
    write: bool
    source: str  # where the location came from: --cache, KILN_CACHE_URI, pyproject.toml, default

    @property
    def enabled(self) -> bool:
        return self.uri is not None

    def describe(self) -> str:
        if self.uri is None:
            return f"cache off ({self.source})"
        return f"cache {self.uri} ({'read-write' if self.write else 'read-only'}, from {self.source})"


def default_uri(root: Path) -> str:
    return (root / ".kiln" / "cache").as_uri()


def _pyproject(root: Path) -> tuple[object, object]:
    """`cache` and `cache-write` of [tool.modelkiln] in the project's pyproject.toml (or None)."""
    path = root / "pyproject.toml"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        raise KilnError(f"{path}: cannot read ({exc}); fix the file's permissions") from None
    except tomllib.TOMLDecodeError as exc:
        raise KilnError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    tool = data.get("tool", {}).get("modelkiln", {})
    if not isinstance(tool, dict):
        raise KilnError(f"{path}: [tool.modelkiln] must be a table")
    return tool.get("cache"), tool.get("cache-write")


def _env_bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise KilnError(f"{name}={raw!r}: expected 1 or 0 (true/false)")


def _check_uri(uri: str, where: str) -> str:
    if not supports(uri):  # s3://, file:// or an installed plug-in transport's scheme
        raise KilnError(f"{where}: cache {uri!r} is not s3://bucket/prefix or file:///path; "
                        "name one of those (or 'off')")
    return uri.rstrip("/")


def resolve(root: Path, uri: str | None = None, write: bool | None = None,
            env: Mapping[str, str] | None = None) -> CacheConfig:
    """The cache configuration for the project at `root` (see the module doc for precedence)."""
    env = os.environ if env is None else env
    file_uri, file_write = _pyproject(root)
    pyproject = str(root / "pyproject.toml")
    if uri is not None:
        chosen, source = uri, "--cache"
    elif env.get(URI_ENV):
        chosen, source = env[URI_ENV], URI_ENV
    elif file_uri is not None:
        if file_uri is False:
            chosen = "off"
        elif isinstance(file_uri, str):
            chosen = file_uri
        else:
            raise KilnError(f"{pyproject}: [tool.modelkiln] cache must be a URI string or false")
        source = "pyproject.toml"
    else:
        chosen, source = default_uri(root), "default"
    if chosen.strip().lower() in OFF:
        return CacheConfig(None, False, source)
    chosen = _check_uri(chosen, source)
    if file_write is not None and not isinstance(file_write, bool):
        raise KilnError(f"{pyproject}: [tool.modelkiln] cache-write must be true or false")
    for value in (write, _env_bool(env, WRITE_ENV), file_write):
        if value is not None:
            return CacheConfig(chosen, value, source)
    return CacheConfig(chosen, source == "default", source)
