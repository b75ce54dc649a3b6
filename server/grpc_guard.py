"""What the gRPC server does around the Estimator methods: requests that are not valid
protobuf (bad UTF-8 in a string, a corrupt wire format) are refused with INVALID_ARGUMENT
instead of gRPC's UNKNOWN, and the connection settings that reclaim idle, silent and dead
connections (keepalive pings, idle and handshake timeouts). Used by
``server.grpc_service``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from proto.vrkn.estimator.v1 import estimator_pb2_grpc as pb_grpc
from server.errors import shown
from server.settings import Settings


class Malformed:
    """Stands for a request that could not be parsed; the handler refuses it."""

    def __init__(self, message: str):
        self.message = message


def _safe(deserialize: Callable[[bytes], Any], type_name: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, ValueError, TypeError) as e:
            return Malformed(f"the request is not a valid {type_name} message: "
                             f"{shown(str(e), 300)}")

    return parse


class _Collect:
    """Takes the handlers that the generated ``add_EstimatorServicer_to_server`` registers."""

    def __init__(self):
        self.name: str | None = None
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass  # registered below, from add_registered_method_handlers

    def add_registered_method_handlers(self, name: str, handlers: dict) -> None:
        self.name, self.handlers = name, handlers


def add_estimator(servicer, server: grpc.aio.Server,
                  on_malformed: Callable[[], None]) -> None:
    """Register ``servicer`` as the generated code would, with deserializers that turn a
    bad request into ``Malformed``: unary methods refuse it with INVALID_ARGUMENT, and
    ``StreamMessages`` (``servicer`` handles it) answers it in an ack and goes on."""
    collect = _Collect()
    pb_grpc.add_EstimatorServicer_to_server(servicer, collect)
    handlers = {}
    for method, h in collect.handlers.items():
        type_name = h.request_deserializer.__self__.DESCRIPTOR.full_name
        h = h._replace(request_deserializer=_safe(h.request_deserializer, type_name))
        if not h.request_streaming:
            h = h._replace(unary_unary=_refusing(h.unary_unary, on_malformed))
        handlers[method] = h
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(collect.name, handlers),))
    server.add_registered_method_handlers(collect.name, handlers)


def _refusing(behaviour, on_malformed: Callable[[], None]):
    async def unary(request, context):
        if isinstance(request, Malformed):
            on_malformed()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behaviour(request, context)

    return unary


def server_options(s: Settings) -> list[tuple[str, int]]:
    """Channel arguments of the server: message sizes and the connection timeouts."""
    ms = lambda seconds: max(1, round(seconds * 1000))  # noqa: E731
    return [
        # The payload limit is checked (and named) by the service; this is the transport's.
        ("grpc.max_receive_message_length", s.max_message_bytes + (64 << 10)),
        ("grpc.max_send_message_length", 16 << 20),
        ("grpc.so_reuseport", 0),
        # A connection that has not finished its handshake by then is closed.
        ("grpc.server_handshake_timeout_ms", ms(s.grpc_handshake_timeout_s)),
        # A connection without calls for this long is closed (GOAWAY; clients reconnect).
        ("grpc.max_connection_idle_ms", ms(s.grpc_max_idle_s)),
        # With calls open, a ping after this much silence; no answer within the timeout:
        # the peer is gone (half-open) and the connection is closed.
        ("grpc.keepalive_time_ms", ms(s.grpc_keepalive_s)),
        ("grpc.keepalive_timeout_ms", ms(s.grpc_keepalive_timeout_s)),
        ("grpc.http2.ping_timeout_ms", ms(s.grpc_keepalive_timeout_s)),  # what closes it
        # Clients may ping this often (without calls too) before the server complains.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
