"""What the service answers, as plain dataclasses with numpy arrays, whichever transport
brought them: the wire resources of ``proto.wire`` (defined once, with the proto), and an
``Ack`` whose refusal is the ``EstimatorError`` of its code. Decoding is field-driven
(``proto.pb_codec.from_pb``, ``proto.json_codec.from_json``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from clients.errors import EstimatorError, error_for
from proto import wire
from proto.wire import (
    Z90,
    Action,
    Belief,
    BeliefDetail,
    ModelInfo,
    SensorSpec,
    SessionInfo,
    StateEstimate,
)

__all__ = ["Z90", "Ack", "Action", "Belief", "BeliefDetail", "ModelInfo", "SensorSpec",
           "SessionInfo", "StateEstimate", "pick_model"]


@dataclass(frozen=True)
class Ack(wire.Ack):
    """``proto.wire.Ack`` with ``error`` (a refused streamed message) as the
    ``EstimatorError`` of its code, carrying the server's reason and message."""

    error: EstimatorError | None = None  # type: ignore[assignment]

    @classmethod
    def of(cls, ack: wire.Ack) -> Ack:
        values = {f.name: getattr(ack, f.name) for f in dataclasses.fields(wire.Ack)}
        e = ack.error
        values["error"] = None if e is None else error_for(e.code, e.message, e.reason or None)
        return cls(**values)


def pick_model(models: list[ModelInfo], name: str | None) -> ModelInfo:
    """The model called ``name``, or the server's default one when ``name`` is None."""
    for m in models:
        if (name is None and m.is_default) or m.name == name:
            return m
    raise KeyError(f"no model {name!r} on the server; it has {[m.name for m in models]}")
