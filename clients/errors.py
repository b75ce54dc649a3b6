"""Errors of the client library: one exception class per status, carrying the server's
code, reason and message, whichever transport (gRPC or HTTP) the call used."""

from __future__ import annotations

from typing import Any


class EstimatorError(Exception):
    """A call failed. ``code`` is the gRPC status name (``NOT_FOUND``, ``OUT_OF_RANGE``...),
    ``reason`` the server's short label when the transport carries it (HTTP bodies and
    stream acks; None for unary gRPC), ``message`` the server's explanation."""

    code = "UNKNOWN"

    def __init__(self, message: str, reason: str | None = None, code: str | None = None,
                 http_status: int | None = None):
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.http_status = http_status
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        reason = f" ({self.reason})" if self.reason else ""
        return f"{self.code}{reason}: {self.message}"


class NotFoundError(EstimatorError):
    code = "NOT_FOUND"


class InvalidArgumentError(EstimatorError):
    code = "INVALID_ARGUMENT"


class OutOfRangeError(EstimatorError):
    code = "OUT_OF_RANGE"


class AbortedError(EstimatorError):
    """The session was reset while this message was being encoded; it was not recorded
    (it belongs to the old time axis: not retried)."""

    code = "ABORTED"


class UnauthenticatedError(EstimatorError):
    code = "UNAUTHENTICATED"


class ResourceExhaustedError(EstimatorError):
    code = "RESOURCE_EXHAUSTED"


class UnavailableError(EstimatorError):
    """The server cannot be reached or is shutting down (retried with back-off)."""

    code = "UNAVAILABLE"


class DeadlineExceededError(EstimatorError):
    code = "DEADLINE_EXCEEDED"


class InternalError(EstimatorError):
    code = "INTERNAL"


BY_CODE: dict[str, type[EstimatorError]] = {
    cls.code: cls for cls in (NotFoundError, InvalidArgumentError, OutOfRangeError,
                              AbortedError, UnauthenticatedError, ResourceExhaustedError,
                              UnavailableError, DeadlineExceededError, InternalError)
}
HTTP_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND",
              409: "ABORTED", 413: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT",
              429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def error_for(code: str, message: str, reason: str | None = None,
              http_status: int | None = None) -> EstimatorError:
    cls = BY_CODE.get(code, EstimatorError)
    return cls(message, reason, code=code, http_status=http_status)


def from_grpc(error: Any) -> EstimatorError:
    """A ``grpc.RpcError`` (a ``grpc.Call``) as an EstimatorError."""
    code = error.code()
    name = code.name if code is not None else "UNKNOWN"
    return error_for(name, error.details() or name)


def from_http(status: int, body: Any) -> EstimatorError:
    """An HTTP error response (status, parsed JSON body or None) as an EstimatorError."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return error_for(str(err.get("code") or HTTP_CODES.get(status, "UNKNOWN")),
                         str(err.get("message", "")), err.get("reason"), status)
    code = HTTP_CODES.get(status, "INTERNAL" if status >= 500 else "UNKNOWN")
    return error_for(code, f"HTTP {status}: {body!r}"[:500], None, status)
