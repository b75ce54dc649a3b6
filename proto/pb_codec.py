"""Wire dataclasses (``proto.wire``) to and from their protobuf messages, driven by the
fields: ``to_pb(resource)``, ``from_pb(cls, message)``. The first use of a class checks it
against its message's descriptor (``check``): a field missing on either side, or of
another type, raises ``SchemaError`` naming it."""

from __future__ import annotations

import functools
import keyword
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from proto.fields import (
    Kind,
    SchemaError,
    Shape,
    WireError,
    WireField,
    enum_member,
    floats,
    wire_fields,
)
from proto.vrkn.estimator.v1 import estimator_pb2 as pb

T = TypeVar("T")
_FD = FieldDescriptor
_SCALAR_TYPES = {Kind.STR: {_FD.TYPE_STRING}, Kind.BOOL: {_FD.TYPE_BOOL},
                 Kind.INT: {_FD.TYPE_INT32, _FD.TYPE_INT64, _FD.TYPE_UINT32, _FD.TYPE_UINT64},
                 Kind.DOUBLE: {_FD.TYPE_DOUBLE}, Kind.FLOAT32: {_FD.TYPE_FLOAT}}
FLOAT_VECTOR = pb.FloatVector  # a map value of Floats travels as this message


def message_class(cls: type) -> type:
    name = getattr(cls, "PROTO", None)
    message = getattr(pb, name, None) if isinstance(name, str) else None
    if message is None:
        raise SchemaError(f"{cls.__name__}: PROTO names no message of estimator.proto "
                          f"(got {name!r})")
    return message


def _mismatch(f: WireField, fd: FieldDescriptor, why: str) -> SchemaError:
    return SchemaError(f"{f.path}: does not match proto field {fd.full_name} ({why})")


def _check_value(f: WireField, shape: Shape, fd: FieldDescriptor, repeated: bool) -> None:
    """``shape`` (an element or map value when nested) against the proto type of ``fd``."""
    if shape.kind in _SCALAR_TYPES:
        if fd.type not in _SCALAR_TYPES[shape.kind]:
            raise _mismatch(f, fd, f"{shape.kind.value} vs proto type {fd.type}")
    elif shape.kind is Kind.FLOATS:
        if repeated:  # a map value: a FloatVector message
            if fd.message_type is None or fd.message_type.name != "FloatVector":
                raise _mismatch(f, fd, "a Floats map value travels as FloatVector")
        elif fd.type != _FD.TYPE_FLOAT or not fd.is_repeated:
            raise _mismatch(f, fd, "Floats is `repeated float`")
    elif shape.kind is Kind.ENUM:
        if fd.enum_type is None:
            raise _mismatch(f, fd, f"expected enum {shape.cls.__name__}")
        ours = {m.value: m.name for m in shape.cls}
        theirs = {v.number: v.name for v in fd.enum_type.values}
        prefix = "".join("_" + c if c.isupper() and i else c
                         for i, c in enumerate(shape.cls.__name__)).upper() + "_"
        if {n: prefix + name for n, name in ours.items()} != theirs:
            raise _mismatch(f, fd, f"enum {shape.cls.__name__} {ours} vs proto "
                                   f"{fd.enum_type.full_name} {theirs}")
    elif shape.kind is Kind.MESSAGE:
        if fd.message_type is None or fd.message_type is not message_class(shape.cls).DESCRIPTOR:
            raise _mismatch(f, fd, f"expected message {shape.cls.PROTO}")
        check(shape.cls)
    else:
        raise _mismatch(f, fd, f"{shape.kind.value} cannot be nested here")


def _check_field(f: WireField, fd: FieldDescriptor) -> None:
    s = f.shape
    is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
    if s.kind is Kind.MAP:
        if not is_map:
            raise _mismatch(f, fd, "a dict is a proto map")
        _check_value(f, s.item, fd.message_type.fields_by_name["value"], True)
        return
    if is_map:
        raise _mismatch(f, fd, "a proto map is `dict[str, X]`")
    if s.kind is Kind.LIST:
        if not fd.is_repeated:
            raise _mismatch(f, fd, "a tuple is a repeated field")
        _check_value(f, s.item, fd, True)
        return
    if fd.is_repeated != (s.kind is Kind.FLOATS):
        raise _mismatch(f, fd, "repeated vs single")
    if s.optional != fd.has_presence:
        raise _mismatch(f, fd, "`X | None` is a field with presence (proto3 `optional` or a "
                               "message)")
    _check_value(f, s, fd, False)


@functools.cache
def check(cls: type) -> Descriptor:
    """Check ``cls`` against its proto message (field names, types, presence); returns
    the message's descriptor."""
    desc = message_class(cls).DESCRIPTOR
    ours = {f.name: f for f in wire_fields(cls)}
    missing = [n for n in desc.fields_by_name if n not in ours]
    if missing:
        raise SchemaError(f"{cls.__name__}: proto message {desc.full_name} has fields "
                          f"{missing} that the dataclass lacks")
    for name, f in ours.items():
        fd = desc.fields_by_name.get(name)
        if fd is None:
            raise SchemaError(f"{f.path}: proto message {desc.full_name} has no such field")
        _check_field(f, fd)
    return desc


# -- encoding --------------------------------------------------------------------------
Encoder = Callable[[Any], Any] | None  # None: the value as it is (protobuf checks scalars)
_F32 = np.dtype(np.float32)


def _float_list(path: str) -> Callable[[Any], list[float]]:
    def encode(v: Any) -> list[float]:
        if type(v) is np.ndarray and v.dtype == _F32 and v.ndim == 1:
            return v.tolist()
        return floats(v, path).tolist()

    return encode


def _encoder(shape: Shape, path: str) -> Encoder:
    k = shape.kind
    if k is Kind.FLOATS:
        return _float_list(path)
    if k is Kind.MESSAGE:
        return to_pb
    if k is Kind.ENUM:
        return int
    if k is Kind.LIST:
        item = _encoder(shape.item, path)
        return list if item is None else (lambda v: [item(x) for x in v])
    if k is Kind.MAP:
        if shape.item.kind is Kind.FLOATS:
            values = _float_list(path)
            return lambda v: {key: FLOAT_VECTOR(values=values(x)) for key, x in v.items()}
        item = _encoder(shape.item, path)
        return None if item is None else (lambda v: {key: item(x) for key, x in v.items()})
    return None


@functools.cache
def _encoders(cls: type) -> tuple[type, tuple[tuple[str, bool, Encoder], ...]]:
    check(cls)
    return message_class(cls), tuple((f.name, f.shape.optional, _encoder(f.shape, f.path))
                                     for f in wire_fields(cls))


@functools.cache
def _encode_function(cls: type) -> Callable[[Any], Any]:
    """``lambda r: Message(a=r.a, b=enc_b(r.b), ...)`` for ``cls``, compiled once (as
    dataclasses compiles ``__init__``): the hot path of every answer. None for a presence
    field leaves it unset."""
    message, plan = _encoders(cls)
    scope: dict[str, Any] = {"_M": message}
    args = []
    for name, optional, encode in plan:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise SchemaError(f"{cls.__name__}.{name}: not a Python identifier")
        expr = f"r.{name}"
        if encode is not None:
            scope[f"_e_{name}"] = encode
            expr = (f"(None if r.{name} is None else _e_{name}(r.{name}))" if optional
                    else f"_e_{name}(r.{name})")
        args.append(f"{name}={expr}")
    exec(f"def encode(r):\n    return _M({', '.join(args)})\n", scope)
    return scope["encode"]


def to_pb(resource: Any) -> Any:
    """The protobuf message of a wire dataclass (None fields left unset)."""
    try:
        return _encode_function(type(resource))(resource)
    except (ValueError, TypeError) as e:  # a wrong type, an integer out of range: which?
        if isinstance(e, SchemaError | WireError):
            raise
        raise _which_field(resource, e) from None


def _which_field(resource: Any, error: Exception) -> WireError:
    cls = type(resource)
    message, plan = _encoders(cls)
    for name, _, encode in plan:
        value = getattr(resource, name)
        try:
            message(**{name: value if encode is None or value is None else encode(value)})
        except (ValueError, TypeError) as one:
            return WireError(f"{cls.__name__}.{name}: {one}")
    return WireError(f"{cls.__name__}: {error}")


# -- decoding --------------------------------------------------------------------------
def _f32(values: Any) -> np.ndarray:
    return np.asarray(list(values), np.float32)


def _decoder(shape: Shape) -> Callable[[Any], Any]:
    k = shape.kind
    if k is Kind.FLOATS:
        return _f32
    if k is Kind.MESSAGE:
        return functools.partial(from_pb, shape.cls)
    if k is Kind.ENUM:
        return functools.partial(enum_member, shape)
    if k is Kind.LIST:
        item = _decoder(shape.item)
        return lambda v: tuple(item(x) for x in v)
    if k is Kind.MAP:
        if shape.item.kind is Kind.FLOATS:
            return lambda v: {key: _f32(x.values) for key, x in v.items()}
        item = _decoder(shape.item)
        return lambda v: {key: item(x) for key, x in v.items()}
    return {Kind.STR: str, Kind.BOOL: bool, Kind.INT: int, Kind.DOUBLE: float,
            Kind.FLOAT32: float}[k]


@functools.cache
def _decoders(cls: type) -> tuple[Descriptor, tuple[tuple[str, bool, Callable[[Any], Any]], ...]]:
    return check(cls), tuple((f.name, f.shape.optional, _decoder(f.shape))
                             for f in wire_fields(cls))


def from_pb(cls: type[T], message: Any) -> T:
    """The wire dataclass ``cls`` of its protobuf message (unset presence fields: None)."""
    desc, plan = _decoders(cls)
    if getattr(message, "DESCRIPTOR", None) is not desc:
        raise WireError(f"{cls.__name__}: expected a {desc.full_name} message, got "
                        f"{type(message).__name__}")
    values = {}
    for name, optional, decode in plan:
        if optional and not message.HasField(name):
            values[name] = None
        else:
            values[name] = decode(getattr(message, name))
    return cls(**values)
