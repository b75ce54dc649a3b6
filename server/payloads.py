"""Sensor payloads: decode and check them against the sensor's shape and dtype.

A payload is one of: an encoded image (PNG or JPEG bytes), a raw array (bytes + shape +
dtype, C order, little-endian), or a list of numbers (vectors; nested lists for the HTTP
API's raw images). Every problem raises ``InvalidArgument`` saying what was wrong; nothing
here touches a session.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from server.errors import InvalidArgument, shown
from server.runtime.manifest import SensorInfo


@dataclass(frozen=True)
class PayloadLimits:
    max_message_bytes: int = 1 << 20  # encoded image or raw array bytes
    max_image_pixels: int = 1 << 20  # width x height announced by an encoded image


@dataclass(frozen=True)
class Payload:
    kind: str  # "encoded", "raw" or "values"
    data: bytes = b""  # encoded image, or raw array bytes
    shape: tuple[int, ...] = ()  # raw
    dtype: str = ""  # raw
    values: object = None  # values: a flat or nested sequence of numbers, or an ndarray


def _shape_error(info: SensorInfo, shape) -> InvalidArgument:
    return InvalidArgument(f"sensor {info.name!r}: shape {shown(list(shape))}, expected "
                           f"{list(info.shape)}", "bad_shape")


def _finite(info: SensorInfo, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind == "f" and not bool(np.isfinite(x).all()):
        raise InvalidArgument(f"sensor {info.name!r}: NaN or infinite values", "not_finite")
    return x


def _decode_image(info: SensorInfo, data: bytes, limits: PayloadLimits) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # imported on first use (no start-up cost)

    if info.kind != "image":
        raise InvalidArgument(f"sensor {info.name!r} is a vector: send values or a raw "
                              "float32 array, not an encoded image", "bad_encoding")
    try:
        img = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))
    except Image.DecompressionBombError:  # the header claims more than 2 x PIL's own limit
        raise InvalidArgument(f"sensor {info.name!r}: the image header claims more than "
                              f"{2 * Image.MAX_IMAGE_PIXELS} pixels, above the limit of "
                              f"{limits.max_image_pixels}", "too_large") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise InvalidArgument(f"sensor {info.name!r}: the payload is not a PNG or JPEG image",
                              "bad_encoding") from None
    if img.format not in ("PNG", "JPEG"):
        raise InvalidArgument(f"sensor {info.name!r}: image format {img.format}, expected PNG "
                              "or JPEG", "bad_encoding")
    width, height = img.size
    if width * height > limits.max_image_pixels:
        raise InvalidArgument(f"sensor {info.name!r}: image is {width}x{height}, above the "
                              f"limit of {limits.max_image_pixels} pixels", "too_large")
    if (height, width) != tuple(info.shape[:2]):
        raise InvalidArgument(f"sensor {info.name!r}: image is {width}x{height} (WxH), "
                              f"expected {info.shape[1]}x{info.shape[0]}", "bad_shape")
    if img.mode not in ("RGB", "L", "P"):
        raise InvalidArgument(f"sensor {info.name!r}: image mode {img.mode}, expected RGB "
                              "(or grey/palette, converted)", "bad_encoding")
    try:
        img = img.convert("RGB") if img.mode != "RGB" else img
        x = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        raise InvalidArgument(f"sensor {info.name!r}: the image data is corrupt or truncated",
                              "bad_encoding") from None
    if x.shape != tuple(info.shape):
        raise _shape_error(info, x.shape)
    return x


def _decode_raw(info: SensorInfo, payload: Payload) -> np.ndarray:
    if len(payload.dtype) > 32:  # "uint8", "float32", "<f4": no need to parse a long one
        raise InvalidArgument(f"sensor {info.name!r}: unknown dtype {shown(payload.dtype)}",
                              "bad_dtype")
    try:
        dtype = np.dtype(payload.dtype)
    except (TypeError, ValueError, SyntaxError):  # e.g. strings numpy cannot encode
        raise InvalidArgument(f"sensor {info.name!r}: unknown dtype {shown(payload.dtype)}",
                              "bad_dtype") from None
    if dtype != info.dtype:
        raise InvalidArgument(f"sensor {info.name!r}: dtype {dtype}, expected {info.dtype}",
                              "bad_dtype")
    shape = tuple(int(s) for s in payload.shape)
    if shape != tuple(info.shape):
        raise _shape_error(info, shape)
    expected = math.prod(shape) * dtype.itemsize
    if len(payload.data) != expected:
        raise InvalidArgument(f"sensor {info.name!r}: {len(payload.data)} bytes of data, "
                              f"{expected} expected for {dtype} {list(shape)}", "bad_shape")
    x = np.frombuffer(payload.data, dtype=dtype.newbyteorder("<")).reshape(shape)
    return _finite(info, x.astype(dtype, copy=False))


def _decode_values(info: SensorInfo, values) -> np.ndarray:
    try:
        x = np.asarray(values, dtype=np.float64)
    except OverflowError:  # an integer beyond float64 (JSON has arbitrary-size integers)
        raise InvalidArgument(f"sensor {info.name!r}: a value is too large for a 64-bit "
                              "float", "not_finite") from None
    except (TypeError, ValueError):
        raise InvalidArgument(f"sensor {info.name!r}: values must be numbers (a flat list, or "
                              "nested lists matching the sensor's shape)", "bad_dtype") from None
    if info.kind == "vector" and x.ndim == 1 and x.size == math.prod(info.shape):
        x = x.reshape(info.shape)
    if x.shape != tuple(info.shape):
        raise _shape_error(info, x.shape)
    _finite(info, x)
    if info.dtype == np.uint8:
        if bool(np.any(x != np.round(x)) or np.any(x < 0) or np.any(x > 255)):
            raise InvalidArgument(f"sensor {info.name!r}: image values must be integers in "
                                  "0..255", "bad_dtype")
    with np.errstate(over="ignore"):
        return _finite(info, x.astype(info.dtype))  # values beyond float32 become inf


def decode_payload(info: SensorInfo, payload: Payload, limits: PayloadLimits) -> np.ndarray:
    """The observation as the sensor's dtype and shape, or InvalidArgument."""
    if payload.kind in ("encoded", "raw") and len(payload.data) > limits.max_message_bytes:
        raise InvalidArgument(f"sensor {info.name!r}: payload is {len(payload.data)} bytes, "
                              f"above the limit of {limits.max_message_bytes}", "too_large")
    if payload.kind == "encoded":
        return _decode_image(info, payload.data, limits)
    if payload.kind == "raw":
        return _decode_raw(info, payload)
    if payload.kind == "values":
        if payload.values is None:
            raise InvalidArgument(f"sensor {info.name!r}: empty payload", "no_payload")
        return _decode_values(info, payload.values)
    raise InvalidArgument(f"sensor {info.name!r}: the message has no payload (send an encoded "
                          "image, a raw array or values)", "no_payload")
