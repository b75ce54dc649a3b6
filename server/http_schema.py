"""The HTTP API's JSON bodies. Requests: pydantic models with strict types (a number is a
JSON number, not a string or a boolean), and the payload of a message body. Responses:
pydantic models derived from the wire dataclasses of ``proto.wire`` (one field each, same
names; every field required in the schema, since answers always carry all of them), which
give the OpenAPI schemas and check what the server sends. The JSON itself is
``proto.json_codec.to_json``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from typing_extensions import TypeAliasType

from proto import wire
from proto.fields import Kind, Shape, wire_fields
from server.errors import InvalidArgument
from server.payloads import Payload

# -- requests ----------------------------------------------------------------------------
STRICT = ConfigDict(strict=True)  # no "0.1" or true for a number, no 1 for a boolean
# A flat list of numbers, or nested lists of them (an H x W x C image).
Numbers = TypeAliasType("Numbers", "list[int | float | Numbers]")


# A belief's detail by its lowercase name (``proto.wire.BeliefDetail``, derived from it).
DetailName = enum.Enum("BeliefDetailName", {d.json_name: d.json_name for d in wire.BeliefDetail
                                            if d is not wire.BeliefDetail.UNSPECIFIED},
                       type=str)
DETAIL_HELP = ("what the belief carries: latent (mean, var, reward), state (and the state "
               "estimate), full (and the decoded estimates with their variance; the default)")


def detail_of(name: DetailName | None) -> wire.BeliefDetail:
    return wire.BeliefDetail.FULL if name is None else wire.BeliefDetail[name.name.upper()]


class RawArray(BaseModel):
    model_config = STRICT
    shape: list[int]
    dtype: str = Field(description="uint8 (images) or float32 (vectors)")
    data_base64: str = Field(description="the array's bytes, little-endian, C order")


class MessageBody(BaseModel):
    model_config = STRICT
    sensor: str
    timestamp: float = Field(description="seconds on the session's clock")
    sequence: int = Field(0, ge=0, lt=1 << 64, description="echoed in the ack")
    image_base64: str | None = Field(None, description="a PNG or JPEG image, base64")
    values: Numbers | None = Field(None, description="a vector, or nested lists for a raw "
                                                     "image (H x W x C, 0..255)")
    raw: RawArray | None = None
    return_belief: bool = Field(False, description="answer with the belief at this tick")
    # not strict: the JSON string is the enum's value (strict would want an enum instance)
    belief_detail: DetailName | None = Field(None, strict=False, description=DETAIL_HELP)


class CreateSessionBody(BaseModel):
    model_config = STRICT
    model: str | None = None
    start_time: float | None = None
    history_window_s: float | None = None


class ResetBody(BaseModel):
    model_config = STRICT
    start_time: float | None = None


class ActionReportBody(BaseModel):
    model_config = STRICT
    timestamp: float
    values: list[int | float]


class ActionRequestBody(BaseModel):
    model_config = STRICT
    timestamp: float


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{what} is not valid base64", "bad_encoding") from None


def payload_of(body: MessageBody) -> Payload:
    given = [n for n in ("image_base64", "values", "raw") if getattr(body, n) is not None]
    if len(given) > 1:
        raise InvalidArgument(f"a message carries one payload; got {given}", "bad_payload")
    if body.image_base64 is not None:
        return Payload("encoded", data=_b64(body.image_base64, "image_base64"))
    if body.raw is not None:
        return Payload("raw", data=_b64(body.raw.data_base64, "raw.data_base64"),
                       shape=tuple(body.raw.shape), dtype=body.raw.dtype)
    if body.values is not None:
        return Payload("values", values=body.values)
    return Payload("none")


# -- responses, derived from proto.wire --------------------------------------------------
# The schema names of the OpenAPI document (kept from before the derivation).
NAMES: dict[type, str] = {
    wire.SensorSpec: "SensorOut", wire.ModelInfo: "ModelOut", wire.SessionInfo: "SessionOut",
    wire.StateEstimate: "StateOut", wire.Belief: "BeliefOut", wire.Error: "AckErrorOut",
    wire.Ack: "AckOut", wire.Action: "ActionOut"}
_SCALARS: dict[Kind, type] = {Kind.STR: str, Kind.BOOL: bool, Kind.INT: int,
                              Kind.DOUBLE: float, Kind.FLOAT32: float}


def _annotation(shape: Shape) -> Any:
    k = shape.kind
    if k is Kind.FLOATS:
        t: Any = list[float]
    elif k is Kind.MESSAGE:
        t = response_model(shape.cls)
    elif k is Kind.ENUM:
        t = Literal[tuple(m.name.lower() for m in shape.cls)]
    elif k is Kind.LIST:
        t = list[_annotation(shape.item)]
    elif k is Kind.MAP:
        t = dict[str, _annotation(shape.item)]
    else:
        t = _SCALARS[k]
    return t | None if shape.optional else t


@functools.cache
def response_model(cls: type) -> type[BaseModel]:
    """The pydantic model of a wire dataclass: its fields, all required (presence fields
    nullable), under the schema name of ``NAMES``."""
    if cls not in NAMES:
        raise TypeError(f"{cls.__name__} has no schema name in server.http_schema.NAMES")
    fields: dict[str, Any] = {f.name: (_annotation(f.shape), ...) for f in wire_fields(cls)}
    return create_model(NAMES[cls], __doc__=cls.__doc__, **fields)


ModelOut = response_model(wire.ModelInfo)
SessionOut = response_model(wire.SessionInfo)
BeliefOut = response_model(wire.Belief)
AckOut = response_model(wire.Ack)
ActionOut = response_model(wire.Action)
