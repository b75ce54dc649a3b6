"""Sensor messages for either transport: images sent encoded (PNG, JPEG) or raw, vectors as
numbers.

A value is an image when it is a ``uint8`` array of shape ``[H, W, C]`` (or already
encoded ``bytes``); anything else is a vector of floats.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from proto.wire import BeliefDetail

ENCODINGS = ("png", "jpeg", "raw")


@dataclass(frozen=True)
class Message:
    """One sensor message, as ``stream_messages`` takes them."""

    session_id: str
    sensor: str
    timestamp: float
    value: Any  # uint8 [H, W, C] image, encoded image bytes, or a float vector
    sequence: int = 0
    return_belief: bool = False
    encoding: str | None = None  # images: png (default), jpeg or raw
    belief_detail: BeliefDetail | None = None  # what the belief carries (None: FULL)


def is_image(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 3


def encode_image(image: np.ndarray, encoding: str = "png", quality: int = 90) -> bytes:
    """PNG (lossless) or JPEG bytes of a ``uint8 [H, W, 3]`` image."""
    from PIL import Image

    if encoding not in ("png", "jpeg"):
        raise ValueError(f"image encoding must be png or jpeg, got {encoding!r}")
    buf = io.BytesIO()
    if encoding == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _check_encoding(encoding: str | None) -> str:
    encoding = encoding or "png"
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    return encoding


def _vector(value: Any) -> np.ndarray:
    return np.asarray(value, np.float32).reshape(-1)


def detail_number(detail: BeliefDetail | None) -> int:
    """The proto number of a requested detail (None: unspecified, which is FULL)."""
    return 0 if detail is None else int(BeliefDetail.of(detail))


def to_pb(msg: Message) -> Any:
    """The ``vrkn.estimator.v1.SensorMessage`` of a message."""
    from proto.vrkn.estimator.v1 import estimator_pb2 as pb

    out = pb.SensorMessage(session_id=msg.session_id, sensor=msg.sensor,
                           timestamp=float(msg.timestamp), sequence=int(msg.sequence),
                           return_belief=bool(msg.return_belief),
                           belief_detail=detail_number(msg.belief_detail))
    value = msg.value
    if isinstance(value, bytes | bytearray | memoryview):
        out.encoded_image = bytes(value)
    elif is_image(value):
        encoding = _check_encoding(msg.encoding)
        if encoding == "raw":
            image = np.ascontiguousarray(value)
            out.raw.CopyFrom(pb.Tensor(shape=list(image.shape), dtype="uint8",
                                       data=image.tobytes()))
        else:
            out.encoded_image = encode_image(value, encoding)
    else:
        out.vector.values[:] = _vector(value).tolist()
    return out


def to_json(msg: Message) -> dict:
    """The HTTP body of ``POST /v1/sessions/{id}/messages``."""
    body: dict[str, Any] = {"sensor": msg.sensor, "timestamp": float(msg.timestamp),
                            "sequence": int(msg.sequence),
                            "return_belief": bool(msg.return_belief)}
    if msg.belief_detail is not None:
        body["belief_detail"] = BeliefDetail.of(msg.belief_detail).json_name
    value = msg.value
    if isinstance(value, bytes | bytearray | memoryview):
        body["image_base64"] = base64.b64encode(bytes(value)).decode()
    elif is_image(value):
        encoding = _check_encoding(msg.encoding)
        if encoding == "raw":
            image = np.ascontiguousarray(value)
            body["raw"] = {"shape": list(image.shape), "dtype": "uint8",
                           "data_base64": base64.b64encode(image.tobytes()).decode()}
        else:
            body["image_base64"] = base64.b64encode(encode_image(value, encoding)).decode()
    else:
        body["values"] = [float(x) for x in _vector(value)]
    return body
