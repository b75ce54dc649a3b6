"""What the sync and asyncio gRPC clients share: channel options, metadata, and for each
operation the RPC name, its request and the decoder of its answer (field-driven:
``proto.pb_codec.from_pb`` into the types of ``clients.types``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from clients import types
from clients.messages import Message, detail_number, to_pb
from proto import wire

TOKEN_ENV = "VRKN_TOKEN"
# Large enough for 64x64 raw images with room to spare; the server enforces its own limit.
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 16 << 20),
                   ("grpc.max_receive_message_length", 16 << 20)]

Call = tuple[str, Any, Callable[[Any], Any]]  # RPC name, request, converter of the answer


def token_from_env(token: str | None) -> str | None:
    """The explicit token, else ``$VRKN_TOKEN`` (unset or empty: no token)."""
    return token if token is not None else (os.environ.get(TOKEN_ENV) or None)


def metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _pb():
    from proto.vrkn.estimator.v1 import estimator_pb2

    return estimator_pb2


def _from_pb(cls: type, message: Any) -> Any:
    from proto.pb_codec import from_pb  # imported on first use (the HTTP client needs none)

    return from_pb(cls, message)


def ack_from_pb(message: Any) -> types.Ack:
    return types.Ack.of(_from_pb(wire.Ack, message))


session_from_pb = partial(_from_pb, types.SessionInfo)
action_from_pb = partial(_from_pb, types.Action)
belief_from_pb = partial(_from_pb, types.Belief)


def list_models() -> Call:
    return ("ListModels", _pb().ListModelsRequest(),
            lambda r: [_from_pb(types.ModelInfo, m) for m in r.models])


def create_session(model: str | None, start_time: float | None,
                   history_window_s: float | None) -> Call:
    req = _pb().CreateSessionRequest(model=model or "")
    if start_time is not None:
        req.start_time = float(start_time)
    if history_window_s is not None:
        req.history_window_s = float(history_window_s)
    return "CreateSession", req, session_from_pb


def describe_session(session_id: str) -> Call:
    return "DescribeSession", _pb().SessionRef(session_id=session_id), session_from_pb


def reset_session(session_id: str, start_time: float | None) -> Call:
    req = _pb().ResetSessionRequest(session_id=session_id)
    if start_time is not None:
        req.start_time = float(start_time)
    return "ResetSession", req, session_from_pb


def close_session(session_id: str) -> Call:
    return "CloseSession", _pb().SessionRef(session_id=session_id), lambda r: None


def send_message(msg: Message) -> Call:
    return "SendMessage", to_pb(msg), ack_from_pb


def report_action(session_id: str, timestamp: float, values: Sequence[float] | np.ndarray
                  ) -> Call:
    vals = np.asarray(values, np.float32).reshape(-1).tolist()
    return ("ReportAction", _pb().ActionReport(session_id=session_id,
                                               timestamp=float(timestamp), values=vals),
            action_from_pb)


def get_action(session_id: str, timestamp: float) -> Call:
    return ("GetAction", _pb().ActionRequest(session_id=session_id, timestamp=float(timestamp)),
            action_from_pb)


def get_belief(session_id: str, timestamp: float | None,
               detail: wire.BeliefDetail | None = None) -> Call:
    req = _pb().BeliefRequest(session_id=session_id, detail=detail_number(detail))
    if timestamp is not None:
        req.timestamp = float(timestamp)
    return "GetBelief", req, belief_from_pb


def health_request(service: str) -> Any:
    from grpc_health.v1 import health_pb2

    return health_pb2.HealthCheckRequest(service=service)


def is_serving(response: Any) -> bool:
    from grpc_health.v1 import health_pb2

    return response.status == health_pb2.HealthCheckResponse.SERVING
