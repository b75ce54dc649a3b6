"""The service's error types. The session logic raises them; each transport maps them to
its own status codes (gRPC status, HTTP status) with the same message.

``reason`` is a short machine-readable label, used in the ``refused`` metric and the
per-session refusal counters.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: ``message`` says what was wrong; ``reason`` labels it for metrics."""

    grpc_code = "UNKNOWN"
    http_status = 500
    default_reason = "error"

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason


class NotFound(ServiceError):
    grpc_code, http_status, default_reason = "NOT_FOUND", 404, "not_found"


class InvalidArgument(ServiceError):
    grpc_code, http_status, default_reason = "INVALID_ARGUMENT", 400, "invalid"


class OutOfRange(ServiceError):
    grpc_code, http_status, default_reason = "OUT_OF_RANGE", 400, "out_of_range"


class Unauthenticated(ServiceError):
    grpc_code, http_status, default_reason = "UNAUTHENTICATED", 401, "unauthenticated"


class ResourceExhausted(ServiceError):
    grpc_code, http_status, default_reason = "RESOURCE_EXHAUSTED", 429, "overloaded"


class Unavailable(ServiceError):
    grpc_code, http_status, default_reason = "UNAVAILABLE", 503, "unavailable"
