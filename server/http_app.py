"""The HTTP transport (FastAPI): the same operations as gRPC in JSON, OpenAPI at /docs,
/healthz, /readyz and /metrics. Thin: request models in (strict types: a number is a JSON
number, not a string or a boolean), ``server.service`` calls, response models out;
``server.errors`` map to status codes with ``{"error": {code, reason, message}}``
(``server.http_guard``: token, body limit, error shape).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response

from proto.json_codec import to_json
from proto.wire import answer
from server import http_guard
from server.errors import ServiceError
from server.http_schema import (
    DETAIL_HELP,
    AckOut,
    ActionOut,
    ActionReportBody,
    ActionRequestBody,
    BeliefOut,
    CreateSessionBody,
    DetailName,
    MessageBody,
    ModelOut,
    ResetBody,
    SessionOut,
    detail_of,
    payload_of,
)
from server.resources import model_infos
from server.service import EstimatorService, SensorMessageIn


# -- the app -----------------------------------------------------------------------------
async def get_service(request: Request) -> EstimatorService:
    return request.app.state.service


Service = Annotated[EstimatorService, Depends(get_service)]


async def no_unknown_query(request: Request) -> None:
    """An unknown query parameter is refused (422), not ignored: ``?time=`` for ``?t=``
    would silently answer the newest belief."""
    route = request.scope.get("route")
    known = {f.alias for f in route.dependant.query_params} if route is not None else set()
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        raise RequestValidationError([{"loc": ("query", unknown[0]), "type": "extra_forbidden",
                                       "msg": f"unknown query parameter (known: {sorted(known)})",
                                       "input": None}])


def build_router() -> APIRouter:
    # The token is checked by http_guard.Guard, before the body is read.
    api = APIRouter(prefix="/v1", responses=http_guard.ERROR_RESPONSES,
                    dependencies=[Depends(no_unknown_query)])

    @api.get("/models", response_model=list[ModelOut])
    async def list_models(service: Service):
        return [to_json(m) for m in model_infos(service.models, service.registry.default_model)]

    @api.post("/sessions", response_model=SessionOut, status_code=201,
              responses={409: http_guard.json_error("the session id chosen is taken"),
                         503: http_guard.json_error("the session store did not answer")})
    async def create_session(body: CreateSessionBody, service: Service,
                             x_session_id: Annotated[str | None, Header(
                                 description="the new session's id, chosen by the client "
                                             "(a balancer routes on it)")] = None):
        with service.metrics.timed("create", "http"):  # issue 14: x-session-id
            return to_json(service.create_session(body.model, body.start_time,
                                                  body.history_window_s, x_session_id))

    @api.get("/sessions/{session_id}", response_model=SessionOut)
    async def describe_session(session_id: str, service: Service):
        with service.metrics.timed("describe", "http"):
            return to_json(service.describe_session(session_id))

    @api.post("/sessions/{session_id}/reset", response_model=SessionOut)
    async def reset_session(session_id: str, body: ResetBody, service: Service):
        with service.metrics.timed("reset", "http"):
            return to_json(service.reset_session(session_id, body.start_time))

    @api.delete("/sessions/{session_id}", status_code=204)
    async def close_session(session_id: str, service: Service):
        with service.metrics.timed("close", "http"):
            service.close_session(session_id)
        return Response(status_code=204)

    @api.post("/sessions/{session_id}/messages", response_model=AckOut,
              responses=http_guard.MESSAGE_RESPONSES)
    async def send_message(session_id: str, body: MessageBody, service: Service):
        with service.metrics.timed("message", "http"):
            try:
                payload = payload_of(body)
            except ServiceError as e:
                service.metrics.refused.labels(e.reason).inc()
                raise
            ack, belief = await service.send_message(SensorMessageIn(
                session_id, body.sensor, body.timestamp, payload, body.return_belief,
                detail_of(body.belief_detail)), "http")
            return to_json(answer(ack, body.sequence, belief))

    @api.post("/sessions/{session_id}/actions", response_model=ActionOut)
    async def report_action(session_id: str, body: ActionReportBody, service: Service):
        with service.metrics.timed("report_action", "http"):
            return to_json(service.report_action(session_id, body.timestamp, body.values))

    @api.post("/sessions/{session_id}/policy", response_model=ActionOut)
    async def get_action(session_id: str, body: ActionRequestBody, service: Service):
        with service.metrics.timed("get_action", "http"):
            return to_json(await service.policy_action(session_id, body.timestamp))

    @api.get("/sessions/{session_id}/belief", response_model=BeliefOut)
    async def get_belief(session_id: str, service: Service,
                   t: Annotated[float | None, Query(description="time; omitted: the newest "
                                                                "tick")] = None,
                   detail: Annotated[DetailName | None, Query(description=DETAIL_HELP)] = None):
        with service.metrics.timed("belief", "http"):
            return to_json(await service.belief(session_id, t, detail_of(detail)))

    return api


def create_app(service: EstimatorService) -> FastAPI:
    app = FastAPI(title="VRKN estimation service", version="1",
                  description="Online multi-rate fusion with a learned latent Kalman filter. "
                              "Session rules: docs/service.md.")
    app.state.service = service

    @app.get("/healthz", tags=["health"])
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: http_guard.ERROR_503})
    async def readyz(service: Service):
        """Ready to serve; the ONNX Runtime providers in use per model, and what the
        restore at start did (``ok: false`` when any saved session was not restored)."""
        if not service.ready:
            return http_guard.ErrorJSON(http_guard.error_body(
                "UNAVAILABLE", "not_ready", "not ready: starting or shutting down"), 503)
        return {"status": "ready", "models": list(service.models),
                "sessions": len(service.registry.sessions),
                "providers": {name: m.bundle.providers for name, m in service.models.items()},
                "restore": restore_out(service), "snapshots_blocked": service.snapshot_blocked}

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse,
             responses={401: http_guard.json_error("missing or wrong bearer token")})
    async def metrics(service: Service):
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    app.include_router(build_router())
    # Base64 adds a third to a payload; JSON around it is small.
    limit = service.settings.max_message_bytes * 4 // 3 + (64 << 10)
    http_guard.install(app, limit, lambda: service.settings.token_value,
                       lambda reason: service.metrics.refused.labels(reason).inc())
    return app


def restore_out(service: EstimatorService) -> dict | None:
    r = service.restore_report
    if r is None:
        return None
    return {"ok": r.ok, "path": r.path, "restored": r.restored, "failed": len(r.failures),
            "failures": [{"reason": reason, "message": message[:300]}
                         for reason, message in r.failures[:10]],
            "kept_copy": r.kept_copy}
