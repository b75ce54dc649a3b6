"""How a wire dataclass's fields are read: each annotation of ``proto.wire`` becomes a typed
``Shape`` (what the field holds), which the codecs (``proto.pb_codec``, ``proto.json_codec``)
and the HTTP models (``server.http_schema``) are driven by. No conversion here.

The vocabulary, and the proto field each annotation stands for:

- ``str``, ``bool``, ``int`` (int32/int64/uint64), ``float`` (double), ``Float32`` (float);
- ``Floats``: ``repeated float``, a 1-D float32 array (a map value: ``FloatVector``);
- ``tuple[X, ...]``: ``repeated X``; ``dict[str, X]``: ``map<string, X>``;
- an ``enum.IntEnum`` (e.g. ``proto.wire.BeliefDetail``): the proto enum of the same
  numbers, its value names the IntEnum's prefixed (``BELIEF_DETAIL_LATENT``); in JSON the
  member's lowercase name. A number or name this side does not know (a newer peer's) reads
  as the zero member, as proto3 wants of open enums;
- a wire dataclass: that message; ``X | None``: a field with presence (proto3
  ``optional`` scalars and every message field).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np


class Kind(enum.Enum):
    STR = "str"
    BOOL = "bool"
    INT = "int"
    DOUBLE = "double"
    FLOAT32 = "float32"
    FLOATS = "float32[]"
    LIST = "list"
    MAP = "map"
    MESSAGE = "message"
    ENUM = "enum"


class _Marker(enum.Enum):
    FLOAT32 = "float32"
    FLOATS = "float32[]"


Float32 = Annotated[float, _Marker.FLOAT32]  # a proto `float`: float32 precision
Floats = Annotated[np.ndarray, _Marker.FLOATS]  # a proto `repeated float`: 1-D float32


class SchemaError(TypeError):
    """A wire dataclass that cannot be mapped (an unknown annotation, or a field that does
    not match its proto message); the message names the field."""


class WireError(ValueError):
    """A value that does not fit its field (e.g. JSON of the wrong type); the message names
    the field."""


@dataclass(frozen=True)
class Shape:
    kind: Kind
    optional: bool = False  # `X | None`: the field has presence; None when unset
    item: Shape | None = None  # LIST: the element; MAP: the value
    cls: type | None = None  # MESSAGE: the wire dataclass; ENUM: the IntEnum


@dataclass(frozen=True)
class WireField:
    name: str
    shape: Shape
    path: str  # "Belief.state": for error messages


_SCALARS = {str: Kind.STR, bool: Kind.BOOL, int: Kind.INT, float: Kind.DOUBLE}


def _shape(hint: Any, path: str) -> Shape:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1 or len(args) != 2:
            raise SchemaError(f"{path}: only `X | None` unions are wire types, got {hint}")
        return dataclasses.replace(_shape(inner[0], path), optional=True)
    if origin is Annotated:
        marker = next((m for m in hint.__metadata__ if isinstance(m, _Marker)), None)
        if marker is _Marker.FLOAT32:
            return Shape(Kind.FLOAT32)
        if marker is _Marker.FLOATS:
            return Shape(Kind.FLOATS)
        raise SchemaError(f"{path}: unknown annotation {hint}")
    if origin is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise SchemaError(f"{path}: a repeated field is `tuple[X, ...]`, got {hint}")
        return Shape(Kind.LIST, item=_shape(args[0], f"{path}[]"))
    if origin is dict:
        if args[:1] != (str,):
            raise SchemaError(f"{path}: a map field is `dict[str, X]`, got {hint}")
        return Shape(Kind.MAP, item=_shape(args[1], f"{path}{{}}"))
    if hint in _SCALARS:
        return Shape(_SCALARS[hint])
    if isinstance(hint, type) and issubclass(hint, enum.IntEnum):
        if 0 not in {m.value for m in hint}:
            raise SchemaError(f"{path}: {hint.__name__} has no zero member (proto3 needs one)")
        return Shape(Kind.ENUM, cls=hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return Shape(Kind.MESSAGE, cls=hint)
    raise SchemaError(f"{path}: {hint} is not a wire type (see proto.fields)")


@functools.cache
def wire_fields(cls: type) -> tuple[WireField, ...]:
    """The fields of a wire dataclass, in declaration order, with their shapes."""
    if not dataclasses.is_dataclass(cls):
        raise SchemaError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for f in dataclasses.fields(cls):
        path = f"{cls.__name__}.{f.name}"
        shape = _shape(hints[f.name], path)
        if shape.kind is Kind.MESSAGE and not shape.optional:
            raise SchemaError(f"{path}: a message field has presence: write `X | None`")
        out.append(WireField(f.name, shape, path))
    return tuple(out)


_ZEROS = {Kind.STR: "", Kind.BOOL: False, Kind.INT: 0, Kind.DOUBLE: 0.0, Kind.FLOAT32: 0.0,
          Kind.LIST: ()}


def zero(shape: Shape) -> Any:
    """The value of a field a message leaves out (proto3's default): None with presence,
    else 0, "", False, an empty array, tuple or dict."""
    if shape.optional:
        return None
    if shape.kind is Kind.FLOATS:
        return np.zeros(0, np.float32)
    if shape.kind is Kind.MAP:
        return {}
    if shape.kind is Kind.ENUM:
        return shape.cls(0)
    return _ZEROS[shape.kind]


def enum_member(shape: Shape, value: int) -> enum.IntEnum:
    """The member of an ENUM field's number; an unknown number is the zero member."""
    try:
        return shape.cls(value)
    except ValueError:
        return shape.cls(0)


def floats(value: Any, path: str) -> np.ndarray:
    """``value`` as the 1-D float32 array a ``Floats`` field holds."""
    a = np.asarray(value, np.float32)
    if a.ndim != 1:
        raise WireError(f"{path}: expected a 1-D float32 array, got shape {list(a.shape)}")
    return a
