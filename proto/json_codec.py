"""Wire dataclasses (``proto.wire``) to and from the HTTP API's JSON, driven by the fields:
``to_json(resource)`` gives plain dicts, lists, numbers and strings (keys are the field
names, presence fields left unset are ``null``); ``from_json(cls, data)`` checks each value
and raises ``WireError`` naming the field (``Belief.state.mean``). A key the JSON leaves
out takes proto3's default, as over gRPC, so an older server's answers still decode."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from proto.fields import Kind, Shape, WireError, enum_member, floats, wire_fields, zero

T = TypeVar("T")
Decoder = Callable[[Any, str], Any]


# -- encoding --------------------------------------------------------------------------
def _encoder(shape: Shape, path: str) -> Callable[[Any], Any]:
    k = shape.kind
    if k is Kind.FLOATS:
        encode = lambda v: floats(v, path).tolist()  # noqa: E731
    elif k is Kind.FLOAT32:
        encode = lambda v: float(np.float32(v))  # noqa: E731
    elif k is Kind.MESSAGE:
        encode = to_json
    elif k is Kind.ENUM:
        encode = lambda v: shape.cls(v).name.lower()  # noqa: E731
    elif k is Kind.LIST:
        item = _encoder(shape.item, path)
        encode = lambda v: [item(x) for x in v]  # noqa: E731
    elif k is Kind.MAP:
        item = _encoder(shape.item, path)
        encode = lambda v: {str(key): item(x) for key, x in v.items()}  # noqa: E731
    else:
        encode = {Kind.STR: str, Kind.BOOL: bool, Kind.INT: int, Kind.DOUBLE: float}[k]
    if shape.optional:
        return lambda v: None if v is None else encode(v)
    return encode


@functools.cache
def _encoders(cls: type) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    return tuple((f.name, _encoder(f.shape, f.path)) for f in wire_fields(cls))


def to_json(resource: Any) -> dict[str, Any]:
    """The JSON object (a dict of plain values) of a wire dataclass."""
    return {name: encode(getattr(resource, name))
            for name, encode in _encoders(type(resource))}


# -- decoding --------------------------------------------------------------------------
def _type_error(path: str, expected: str, value: Any) -> WireError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return WireError(f"{path}: expected {expected}, got {shown}")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _number(v: Any, path: str) -> float:
    if not _is_number(v):
        raise _type_error(path, "a number", v)
    return float(v)


def _scalar(kind: Kind) -> Decoder:
    def decode(v: Any, path: str) -> Any:
        if kind is Kind.STR and not isinstance(v, str):
            raise _type_error(path, "a string", v)
        if kind is Kind.BOOL and not isinstance(v, bool):
            raise _type_error(path, "true or false", v)
        if kind is Kind.INT and (not isinstance(v, int) or isinstance(v, bool)):
            raise _type_error(path, "an integer", v)
        if kind is Kind.DOUBLE:
            return _number(v, path)
        if kind is Kind.FLOAT32:
            return float(np.float32(_number(v, path)))
        return v

    return decode


def _floats(v: Any, path: str) -> np.ndarray:
    if not isinstance(v, list) or not all(_is_number(x) for x in v):
        raise _type_error(path, "a list of numbers", v)
    return np.asarray(v, np.float32)


def _decoder(shape: Shape) -> Decoder:
    k = shape.kind
    if k is Kind.FLOATS:
        decode = _floats
    elif k is Kind.MESSAGE:
        cls = shape.cls
        decode = lambda v, path: _decode(cls, v, path)  # noqa: E731
    elif k is Kind.ENUM:
        names = {m.name.lower(): m.value for m in shape.cls}

        def decode(v: Any, path: str) -> Any:
            if not isinstance(v, str):
                raise _type_error(path, f"one of {sorted(names)}", v)
            return enum_member(shape, names.get(v, 0))
    elif k is Kind.LIST:
        item = _decoder(shape.item)

        def decode(v: Any, path: str) -> Any:
            if not isinstance(v, list):
                raise _type_error(path, "a list", v)
            return tuple(item(x, f"{path}[{i}]") for i, x in enumerate(v))
    elif k is Kind.MAP:
        item = _decoder(shape.item)

        def decode(v: Any, path: str) -> Any:
            if not isinstance(v, dict):
                raise _type_error(path, "an object", v)
            return {key: item(x, f"{path}[{key!r}]") for key, x in v.items()}
    else:
        decode = _scalar(k)
    if shape.optional:
        return lambda v, path: None if v is None else decode(v, path)
    return decode


@functools.cache
def _decoders(cls: type) -> tuple[tuple[str, Shape, Decoder], ...]:
    return tuple((f.name, f.shape, _decoder(f.shape)) for f in wire_fields(cls))


def _decode(cls: type[T], data: Any, path: str) -> T:
    if not isinstance(data, dict):
        raise _type_error(path, f"a {cls.__name__} object", data)
    values = {}
    for name, shape, decode in _decoders(cls):
        values[name] = decode(data[name], f"{path}.{name}") if name in data else zero(shape)
    return cls(**values)


def from_json(cls: type[T], data: Any) -> T:
    """The wire dataclass ``cls`` of its JSON object (parsed); ``WireError`` names the first
    field that does not fit. Unknown keys are ignored (a newer server's fields)."""
    return _decode(cls, data, cls.__name__)
