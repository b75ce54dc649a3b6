"""What the HTTP app does before and around its routes: the bearer token (checked before a
byte of the body is read), the body limit (enforced while the body streams in, with or
without Content-Length), one error shape for every error, and the error responses the
OpenAPI document lists. Used by ``server.http_app``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from server.auth import check_bearer
from server.errors import MAX_MESSAGE_CHARS, ServiceError, Unauthenticated

log = logging.getLogger("server.http")
PROTECTED = ("/v1/", "/metrics")  # need the token (when one is set); the rest is open
HTTP_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND",
              405: "UNIMPLEMENTED", 409: "ABORTED", 413: "INVALID_ARGUMENT",
              429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}


class ErrorDetail(BaseModel):
    code: str = Field(description="gRPC status name: NOT_FOUND, INVALID_ARGUMENT, "
                                  "OUT_OF_RANGE, ...")
    reason: str = Field(description="short label, as in the refusal counters")
    message: str = Field(description="what was wrong")


class ErrorOut(BaseModel):
    error: ErrorDetail


def _doc(text: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": text}


def json_error(text: str) -> dict[str, Any]:
    """An error response for a route whose own responses are not JSON (/metrics)."""
    return {"description": text, "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/ErrorOut"}}}}


# The error statuses of the API routes, for the OpenAPI document (every one has ErrorOut).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc("bad input: payload, values, time (INVALID_ARGUMENT, OUT_OF_RANGE)"),
    401: _doc("missing or wrong bearer token (UNAUTHENTICATED)"),
    404: _doc("unknown session, sensor or model (NOT_FOUND)"),
    413: _doc("request body above the limit (INVALID_ARGUMENT, too_large)"),
    422: _doc("the body or a parameter does not have the documented types (bad_request)"),
    429: _doc("a limit was reached: sessions, queues (RESOURCE_EXHAUSTED)"),
}
ERROR_503 = _doc("not ready: starting or shutting down (UNAVAILABLE)")
MESSAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: _doc("the session was reset while this message was being encoded (ABORTED)"),
    503: _doc("the server is shutting down or the encoder failed (UNAVAILABLE)"),
}


class ErrorJSON(JSONResponse):
    """JSON with every non-ASCII character escaped: a string that cannot be UTF-8 (a lone
    surrogate a client sent) can still be answered."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode()


def error_body(code: str, reason: str, message: str) -> dict[str, Any]:
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 15] + "... (truncated)"
    return {"error": {"code": code, "reason": reason, "message": message}}


def error_response(e: ServiceError, close: bool = False) -> ErrorJSON:
    headers = {"WWW-Authenticate": "Bearer"} if e.http_status == 401 else {}
    if close:  # the body was not read: the connection cannot carry another request
        headers["connection"] = "close"
    return ErrorJSON(error_body(e.grpc_code, e.reason, e.message), e.http_status,
                     headers=headers)


class TooLarge(ServiceError):
    grpc_code, http_status, default_reason = "INVALID_ARGUMENT", 413, "too_large"


class Internal(ServiceError):
    grpc_code, http_status, default_reason = "INTERNAL", 500, "internal"


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class Guard:
    """ASGI middleware around the whole app. For protected paths, the bearer token first
    (401 before the body is read); then the body: a Content-Length above ``limit`` is 413 at
    once, and a body that streams in (chunked) is counted and refused with 413 as soon as
    it passes ``limit``. The app gets the body it would have read. A bug in a route answers
    500 in the error shape (logged) and keeps the connection."""

    def __init__(self, app, limit: int, token: Callable[[], str | None],
                 on_refuse: Callable[[str], None]):
        self.app, self.limit, self.token, self.on_refuse = app, limit, token, on_refuse

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced = _header(scope, b"content-length")
        has_body = _header(scope, b"transfer-encoding") is not None or \
            announced not in (None, b"0")
        refusal = self._refusal(scope, announced)
        if refusal is not None:
            self.on_refuse(refusal.reason)
            await error_response(refusal, close=has_body)(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away (or timed out: server.http_protocol)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                self.on_refuse("too_large")
                e = TooLarge(f"request body is above the limit of {self.limit} bytes")
                await error_response(e, close=True)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self._run(scope, b"".join(chunks), receive, send)

    def _refusal(self, scope, announced: bytes | None) -> ServiceError | None:
        path = scope["path"]
        if path.startswith(PROTECTED) or path == "/v1":
            try:
                check_bearer(self.token(), (_header(scope, b"authorization") or b"")
                             .decode("latin-1") or None)
            except Unauthenticated as e:
                return e
        if announced is not None and announced.isdigit() and int(announced) > self.limit:
            return TooLarge(f"request body is {int(announced)} bytes, above the limit of "
                            f"{self.limit}")
        return None

    async def _run(self, scope, body: bytes, receive, send) -> None:
        replayed, started = False, False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then wait for the disconnect, as the server would

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, replay, tracked)
        except Exception:
            log.exception("HTTP %s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise
            e = Internal("internal error (logged by the server); the session is unchanged "
                         "unless the call said otherwise")
            self.on_refuse(e.reason)
            await error_response(e)(scope, replay, send)


def _is_branch(part: object) -> bool:  # a union member's tag in pydantic's error location
    return part in ("int", "float") or (isinstance(part, str) and part.startswith("list["))


def validation_problems(errors) -> list[tuple[str, str]]:
    """(where, what) per problem; a value that matches no member of a number union is one
    problem ("should be a number"), not one per member."""
    out: dict[str, str] = {}
    lists: set[str] = set()  # union problems where a list was a member too
    for err in errors:
        loc = list(err["loc"])
        cut = next((i for i, part in enumerate(loc) if _is_branch(part)), None)
        if cut is None:
            out.setdefault(".".join(map(str, loc)), err["msg"])
            continue
        where = ".".join(map(str, loc[:cut]))
        out.setdefault(where, "Input should be a number (a JSON number, not a string or a "
                              "boolean)")
        if any(isinstance(p, str) and p.startswith("list[") for p in loc[cut:]):
            lists.add(where)
    return [(where, what + (", or a list of numbers" if where in lists else ""))
            for where, what in out.items()]


def install(app: FastAPI, limit: int, token: Callable[[], str | None],
            on_refuse: Callable[[str], None]) -> None:
    """The error handlers (one shape), the Guard middleware and the OpenAPI security."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, e: ServiceError):
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        problems = validation_problems(e.errors())
        text = "; ".join(f"{where}: {what}" for where, what in problems[:5])
        if len(problems) > 5:
            text += f"; and {len(problems) - 5} more"
        on_refuse("bad_request")
        return ErrorJSON(error_body("INVALID_ARGUMENT", "bad_request", text), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        code = HTTP_CODES.get(e.status_code, "INTERNAL" if e.status_code >= 500
                              else "INVALID_ARGUMENT")
        reason = {404: "unknown_route", 405: "method_not_allowed"}.get(e.status_code,
                                                                       "bad_request")
        return ErrorJSON(error_body(code, reason, str(e.detail)), e.status_code,
                         headers=e.headers)

    app.add_middleware(Guard, limit=limit, token=token, on_refuse=on_refuse)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            if token() is not None:
                schema.setdefault("components", {})["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"}}
                for path, operations in schema["paths"].items():
                    if path.startswith(PROTECTED):
                        for op in operations.values():
                            op["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
