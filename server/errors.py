"""The service's error types. The session logic raises them; each transport maps them to
its own status codes (gRPC status, HTTP status) with the same message.

``reason`` is a short machine-readable label, used in the ``refused`` metric and the
per-session refusal counters. Messages are capped at ``MAX_MESSAGE_CHARS`` (a gRPC status
message travels in a trailer, which clients refuse above 8 KiB), and strings a client sent
are echoed through ``shown``, which truncates them.
"""

from __future__ import annotations

MAX_MESSAGE_CHARS = 1024
MAX_SHOWN_CHARS = 64


def shown(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, at most about ``limit`` characters: a longer
    one is cut and says how long it was. ``repr`` escapes what cannot be encoded (lone
    surrogates, control characters)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} as text"
    return f"{text[:limit]}... ({size})"


class ServiceError(Exception):
    """Base class: ``message`` says what was wrong; ``reason`` labels it for metrics."""

    grpc_code = "UNKNOWN"
    http_status = 500
    default_reason = "error"

    def __init__(self, message: str, reason: str | None = None):
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS - 15] + "... (truncated)"
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason


class NotFound(ServiceError):
    grpc_code, http_status, default_reason = "NOT_FOUND", 404, "not_found"


class InvalidArgument(ServiceError):
    grpc_code, http_status, default_reason = "INVALID_ARGUMENT", 400, "invalid"


class OutOfRange(ServiceError):
    grpc_code, http_status, default_reason = "OUT_OF_RANGE", 400, "out_of_range"


class Aborted(ServiceError):
    """A concurrent call changed the session under this one (a reset while a message was
    being encoded): nothing was recorded."""

    grpc_code, http_status, default_reason = "ABORTED", 409, "aborted"


class Unauthenticated(ServiceError):
    grpc_code, http_status, default_reason = "UNAUTHENTICATED", 401, "unauthenticated"


class ResourceExhausted(ServiceError):
    grpc_code, http_status, default_reason = "RESOURCE_EXHAUSTED", 429, "overloaded"


class Unavailable(ServiceError):
    grpc_code, http_status, default_reason = "UNAVAILABLE", 503, "unavailable"


class AlreadyExists(ServiceError):
    """A session id given by the client is taken (issue 14: ids chosen for routing)."""

    grpc_code, http_status, default_reason = "ALREADY_EXISTS", 409, "already_exists"
