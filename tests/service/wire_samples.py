"""Random wire resources (``proto.wire``) and a bit-exact comparison, for the schema
tests (``test_schema.py``, ``tests/clients/test_schema_roundtrip.py``)."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import numpy as np
from google.protobuf.descriptor import FieldDescriptor

from proto.fields import Kind, Shape, wire_fields
from proto.pb_codec import message_class

FD = FieldDescriptor
CHARS = list("az_-.09 éß∆水🙂\"\\/\n")
RANGES = {FD.TYPE_INT32: (-(1 << 31), 1 << 31), FD.TYPE_INT64: (-(1 << 63), 1 << 63),
          FD.TYPE_UINT64: (0, 1 << 64)}


def finite(rng: np.random.Generator, dtype, n: int) -> np.ndarray:
    """``n`` finite values of ``dtype``: random bit patterns (any exponent) and the edges
    (-0.0, the smallest subnormal, the largest value)."""
    info = np.finfo(dtype)
    bits = rng.integers(0, 256, 8 * (n + 8), dtype=np.uint8).view(dtype)
    pool = np.concatenate([np.array([-0.0, info.smallest_subnormal, info.max], dtype),
                           bits[np.isfinite(bits)][:16]])
    return rng.choice(pool, n)


def _value(shape: Shape, fd: FieldDescriptor, rng: np.random.Generator) -> Any:
    if shape.optional and rng.random() < 0.3:
        return None
    k = shape.kind
    if k is Kind.STR:
        return "".join(rng.choice(CHARS, rng.integers(0, 8)))
    if k is Kind.BOOL:
        return bool(rng.integers(2))
    if k is Kind.INT:
        lo, hi = RANGES[fd.type]
        return [lo, hi - 1, 0, max(lo, int(rng.integers(-1000, 1000)))][rng.integers(4)]
    if k is Kind.DOUBLE:
        return float(finite(rng, np.float64, 1)[0])
    if k is Kind.FLOAT32:
        return float(finite(rng, np.float32, 1)[0])
    if k is Kind.FLOATS:
        return finite(rng, np.float32, int(rng.integers(0, 6)))
    if k is Kind.MESSAGE:
        return sample(shape.cls, rng)
    if k is Kind.ENUM:
        return list(shape.cls)[int(rng.integers(len(shape.cls)))]
    n = int(rng.integers(0, 4))
    if k is Kind.LIST:
        return tuple(_value(shape.item, fd, rng) for _ in range(n))
    value_fd = fd.message_type.fields_by_name["value"]
    return {"".join(rng.choice(CHARS, 3)) + str(i): _value(shape.item, value_fd, rng)
            for i in range(n)}


def sample(cls: type, rng: np.random.Generator) -> Any:
    """A random instance of a wire dataclass, every field set to a random value."""
    desc = message_class(cls).DESCRIPTOR
    return cls(**{f.name: _value(f.shape, desc.fields_by_name[f.name], rng)
                  for f in wire_fields(cls)})


def assert_identical(a: Any, b: Any, path: str = "") -> None:
    """Equal to the bit: same types, float bits (-0.0 is not 0.0), array dtypes and bytes;
    map keys in any order (proto maps keep none)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_identical(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape}"
        assert a.tobytes() == b.tobytes(), f"{path}: {a} vs {b}"
    elif isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b), f"{path}: {a!r} vs {b!r}"
    elif isinstance(a, tuple | list):
        assert len(a) == len(b), f"{path}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert sorted(a) == sorted(b), f"{path}: keys {list(a)} vs {list(b)}"  # maps: no order
        for k in a:
            assert_identical(a[k], b[k], f"{path}[{k!r}]")
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"
