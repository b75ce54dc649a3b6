"""The HTTP transport (FastAPI): the same operations as gRPC in JSON, OpenAPI at /docs,
/healthz, /readyz and /metrics. Thin: request models in (strict types: a number is a JSON
number, not a string or a boolean), ``server.service`` calls, response models out;
``server.errors`` map to status codes with ``{"error": {code, reason, message}}``
(``server.http_guard``: token, body limit, error shape).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypeAliasType

from server import http_guard
from server.errors import InvalidArgument, ServiceError
from server.payloads import Payload
from server.service import EstimatorService, SensorMessageIn
from server.session import Ack, ActionView, BeliefView, SessionInfo

# -- request and response bodies -------------------------------------------------------
STRICT = ConfigDict(strict=True)  # no "0.1" or true for a number, no 1 for a boolean
# A flat list of numbers, or nested lists of them (an H x W x C image).
Numbers = TypeAliasType("Numbers", "list[int | float | Numbers]")


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


class SensorOut(BaseModel):
    name: str
    kind: str
    shape: list[int]
    dtype: str
    decoded: bool


class ModelOut(BaseModel):
    name: str
    is_default: bool
    control_period_s: float
    latent_size: int
    action_size: int
    action_low: list[float]
    action_high: list[float]
    sensors: list[SensorOut]
    code_version: str
    manifest_sha256: str
    state_names: list[str]


class SessionOut(BaseModel):
    session_id: str
    model: str
    control_period_s: float
    history_window_s: float
    start_time: float | None
    newest_tick: int
    newest_time: float | None
    accepted: dict[str, int]
    refused: dict[str, int]
    superseded: int
    actions: int
    replayed_ticks: int
    idle_s: float


class StateOut(BaseModel):
    """The physical state in physical units; a 90% interval is mean ± 1.645·sqrt(var)."""

    names: list[str]
    mean: list[float]
    var: list[float]


class BeliefOut(BaseModel):
    session_id: str
    timestamp: float | None
    tick: int
    newest_tick: int
    predicted: bool
    mean: list[float]
    var: list[float]
    decoded: dict[str, list[float]]
    reward: float
    state: StateOut | None = None
    decoded_var: dict[str, list[float]] = {}


class AckOut(BaseModel):
    sequence: int
    session_id: str
    sensor: str
    tick: int
    applied: bool
    newest_tick: int
    belief: BeliefOut | None = None


class ActionOut(BaseModel):
    session_id: str
    timestamp: float
    tick: int
    values: list[float]
    source: str
    recorded: bool


def session_out(i: SessionInfo) -> SessionOut:
    return SessionOut(session_id=i.id, model=i.model, control_period_s=i.control_period_s,
                      history_window_s=i.history_window_s, start_time=i.start_time,
                      newest_tick=i.newest_tick, newest_time=i.newest_time,
                      accepted=i.accepted, refused=i.refused, superseded=i.superseded,
                      actions=i.actions, replayed_ticks=i.replayed_ticks, idle_s=i.idle_s)


def belief_out(b: BeliefView) -> BeliefOut:
    return BeliefOut(session_id=b.session_id, timestamp=b.timestamp, tick=b.tick,
                     newest_tick=b.newest_tick, predicted=b.predicted, mean=b.mean.tolist(),
                     var=b.var.tolist(),
                     decoded={k: v.mean.tolist() for k, v in b.decoded.items()},
                     decoded_var={k: v.var.tolist() for k, v in b.decoded.items()},
                     reward=b.reward,
                     state=None if b.state is None else StateOut(
                         names=list(b.state_names), mean=b.state.mean.tolist(),
                         var=b.state.var.tolist()))


def action_out(a: ActionView) -> ActionOut:
    return ActionOut(session_id=a.session_id, timestamp=a.timestamp, tick=a.tick,
                     values=a.values.tolist(), source=a.source, recorded=a.recorded)


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
        default = service.registry.default_model
        out = []
        for m in service.models.values():
            man = m.manifest
            out.append(ModelOut(
                name=m.name, is_default=m.name == default, control_period_s=man.control_period,
                latent_size=man.latent_size, action_size=man.action_size,
                action_low=man.action_low.tolist(), action_high=man.action_high.tolist(),
                sensors=[SensorOut(name=s.name, kind=s.kind, shape=list(s.shape),
                                   dtype=str(s.dtype),
                                   decoded=s.kind == "vector" and m.bundle.has_decoder(s.name))
                         for s in man.sensors],
                code_version=man.code_version, manifest_sha256=m.digest,
                state_names=list(m.state_names)))
        return out

    @api.post("/sessions", response_model=SessionOut, status_code=201)
    async def create_session(body: CreateSessionBody, service: Service):
        with service.metrics.timed("create", "http"):
            return session_out(service.create_session(body.model, body.start_time,
                                                      body.history_window_s))

    @api.get("/sessions/{session_id}", response_model=SessionOut)
    async def describe_session(session_id: str, service: Service):
        with service.metrics.timed("describe", "http"):
            return session_out(service.describe_session(session_id))

    @api.post("/sessions/{session_id}/reset", response_model=SessionOut)
    async def reset_session(session_id: str, body: ResetBody, service: Service):
        with service.metrics.timed("reset", "http"):
            return session_out(service.reset_session(session_id, body.start_time))

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
                session_id, body.sensor, body.timestamp, payload, body.return_belief), "http")
            return ack_out(ack, body.sequence, belief)

    @api.post("/sessions/{session_id}/actions", response_model=ActionOut)
    async def report_action(session_id: str, body: ActionReportBody, service: Service):
        with service.metrics.timed("report_action", "http"):
            return action_out(service.report_action(session_id, body.timestamp, body.values))

    @api.post("/sessions/{session_id}/policy", response_model=ActionOut)
    async def get_action(session_id: str, body: ActionRequestBody, service: Service):
        with service.metrics.timed("get_action", "http"):
            return action_out(service.policy_action(session_id, body.timestamp))

    @api.get("/sessions/{session_id}/belief", response_model=BeliefOut)
    async def get_belief(session_id: str, service: Service,
                   t: Annotated[float | None, Query(description="time; omitted: the newest "
                                                                "tick")] = None):
        with service.metrics.timed("belief", "http"):
            return belief_out(service.belief(session_id, t))

    return api


def ack_out(ack: Ack, sequence: int, belief: BeliefView | None) -> AckOut:
    return AckOut(sequence=sequence, session_id=ack.session_id, sensor=ack.sensor,
                  tick=ack.tick, applied=ack.applied, newest_tick=ack.newest_tick,
                  belief=belief_out(belief) if belief is not None else None)


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
