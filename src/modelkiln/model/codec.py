"""A `Bundle` as plain JSON data and back, for the cache of converted bundles (`model.cache`).

JSON, not pickle, because the cache directory must never be a way to run code. The mapping follows
the dataclasses' own type hints (Path <-> str, tuples <-> lists, nested records <-> objects), so a
field added to `model.bundle` needs no change here; a type this module does not know fails loudly
at the first use instead of round-tripping wrong. Decoders are built once per type.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .bundle import Bundle

Decoder = Callable[[Any], Any]
_SCALARS = (str, int, float, bool)


def encode(value: Any) -> Any:
    """JSON-able form of a Bundle (or any of its parts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [encode(v) for v in value]
    if value is None or isinstance(value, _SCALARS):
        return value
    raise TypeError(f"no JSON form for {type(value).__name__}")


def decode_bundle(data: Any) -> Bundle:
    """The Bundle `encode` was given; KeyError, TypeError or ValueError when `data` is not one."""
    bundle: Bundle = _decoder(Bundle)(data)
    return bundle


def _same(value: Any) -> Any:
    return value


def _optional(inner: Decoder) -> Decoder:
    return lambda v: None if v is None else inner(v)


def _tuple_of(inner: Decoder) -> Decoder:
    def dec(v: Any) -> tuple[Any, ...]:
        if not isinstance(v, list):
            raise TypeError("expected a list")
        return tuple(inner(x) for x in v)
    return dec


def _fixed(inners: list[Decoder]) -> Decoder:
    def dec(v: Any) -> tuple[Any, ...]:
        if not isinstance(v, list):
            raise TypeError("expected a list")
        return tuple(d(x) for d, x in zip(inners, v, strict=True))
    return dec


def _record(cls: type[Any]) -> Decoder:
    hints = typing.get_type_hints(cls)
    fields = [(f.name, _decoder(hints[f.name])) for f in dataclasses.fields(cls)]

    def dec(v: Any) -> Any:
        if not isinstance(v, dict):
            raise TypeError(f"expected an object for {cls.__name__}")
        return cls(**{name: d(v[name]) for name, d in fields})
    return dec


def _scalar(kind: type[Any]) -> Decoder:
    def dec(v: Any) -> Any:
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise TypeError(f"expected {kind.__name__}")
        return v
    return dec


@functools.lru_cache(maxsize=4096)
def _path(text: str) -> Path:
    """One Path per distinct string (Paths are immutable): bundles share their project root and
    often their checkpoint and label files, and parsing a path is most of a decode's time."""
    return Path(text)


def _to_path(v: Any) -> Path:
    if not isinstance(v, str):
        raise TypeError("expected a path string")
    return _path(v)


@functools.cache
def _decoder(tp: Any) -> Decoder:
    if tp is Path:
        return _to_path
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _record(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _optional(_decoder(rest[0]))
        if all(a in _SCALARS for a in rest):  # metadata values: JSON keeps their type
            return _same
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _tuple_of(_decoder(args[0]))
        return _fixed([_decoder(a) for a in args])
    if tp in _SCALARS:
        return _scalar(tp)
    raise TypeError(f"model.codec cannot decode {tp!r}")
