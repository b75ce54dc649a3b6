"""The gRPC transport (grpc.aio): the Estimator service, standard health checking and
reflection, bearer-token auth. Thin: converts messages and maps ``server.errors`` to
status codes; the work is in ``server.service``. ``server.grpc_guard``: unparsable
requests, connection timeouts."""

from __future__ import annotations

import asyncio
import logging

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from proto.vrkn.estimator.v1 import estimator_pb2 as pb
from proto.vrkn.estimator.v1 import estimator_pb2_grpc as pb_grpc
from server.auth import check_bearer
from server.errors import ServiceError, Unauthenticated
from server.grpc_guard import Malformed, add_estimator, server_options
from server.models import Model
from server.payloads import Payload
from server.service import EstimatorService, SensorMessageIn
from server.session import Ack, ActionView, BeliefView, SessionInfo

log = logging.getLogger("server.grpc")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Estimator"].full_name
OPEN_METHODS = ("/grpc.health.v1.Health/",)  # no token needed (load balancers, probes)


# -- conversions -------------------------------------------------------------------------
def model_pb(m: Model, default: bool) -> pb.ModelInfo:
    man = m.manifest
    return pb.ModelInfo(
        name=m.name, is_default=default, control_period_s=man.control_period,
        latent_size=man.latent_size, action_size=man.action_size,
        action_low=man.action_low.tolist(), action_high=man.action_high.tolist(),
        sensors=[pb.SensorSpec(name=s.name, kind=s.kind, shape=list(s.shape), dtype=str(s.dtype),
                               decoded=s.kind == "vector" and m.bundle.has_decoder(s.name))
                 for s in man.sensors],
        code_version=man.code_version, manifest_sha256=m.digest,
        state_names=list(m.state_names))


def session_pb(i: SessionInfo) -> pb.Session:
    return pb.Session(
        session_id=i.id, model=i.model, control_period_s=i.control_period_s,
        history_window_s=i.history_window_s, start_time=i.start_time,
        newest_tick=i.newest_tick, newest_time=i.newest_time, accepted=i.accepted,
        refused=i.refused, superseded=i.superseded, actions=i.actions,
        replayed_ticks=i.replayed_ticks, idle_s=i.idle_s)


def belief_pb(b: BeliefView) -> pb.Belief:
    return pb.Belief(session_id=b.session_id, timestamp=b.timestamp, tick=b.tick,
                     newest_tick=b.newest_tick, predicted=b.predicted, mean=b.mean.tolist(),
                     var=b.var.tolist(), reward=b.reward,
                     decoded={k: pb.FloatVector(values=v.mean.tolist()) for k, v in
                              b.decoded.items()},
                     decoded_var={k: pb.FloatVector(values=v.var.tolist()) for k, v in
                                  b.decoded.items()},
                     state=None if b.state is None else pb.StateEstimate(
                         names=list(b.state_names), mean=b.state.mean.tolist(),
                         var=b.state.var.tolist()))


def action_pb(a: ActionView) -> pb.Action:
    return pb.Action(session_id=a.session_id, timestamp=a.timestamp, tick=a.tick,
                     values=a.values.tolist(), source=a.source, recorded=a.recorded)


def ack_pb(ack: Ack, sequence: int, belief: BeliefView | None) -> pb.Ack:
    return pb.Ack(sequence=sequence, session_id=ack.session_id, sensor=ack.sensor, tick=ack.tick,
                  applied=ack.applied, newest_tick=ack.newest_tick,
                  belief=belief_pb(belief) if belief is not None else None)


def message_in(req: pb.SensorMessage) -> SensorMessageIn:
    kind = req.WhichOneof("payload")
    if kind == "encoded_image":
        payload = Payload("encoded", data=req.encoded_image)
    elif kind == "raw":
        payload = Payload("raw", data=req.raw.data, shape=tuple(req.raw.shape),
                          dtype=req.raw.dtype)
    elif kind == "vector":
        payload = Payload("values", values=np.asarray(req.vector.values, np.float32))
    else:
        payload = Payload("none")
    return SensorMessageIn(req.session_id, req.sensor, req.timestamp, payload,
                           req.return_belief)


def _status(e: ServiceError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, e.grpc_code, grpc.StatusCode.UNKNOWN)


class EstimatorServicer(pb_grpc.EstimatorServicer):
    def __init__(self, service: EstimatorService):
        self.service = service
        self.metrics = service.metrics

    async def _call(self, op: str, context, fn, *args):
        with self.metrics.timed(op, "grpc"):
            try:
                return fn(*args)
            except ServiceError as e:
                await context.abort(_status(e), e.message)
            except Exception:  # a bug, not bad input: logged, and a clean status
                log.exception("%s failed", op)
                self.metrics.refused.labels("internal").inc()
                await context.abort(grpc.StatusCode.INTERNAL,
                                    f"internal error in {op} (logged by the server)")

    async def ListModels(self, request, context):
        default = self.service.registry.default_model
        return pb.ListModelsResponse(models=[model_pb(m, m.name == default)
                                             for m in self.service.models.values()])

    async def CreateSession(self, request, context):
        return session_pb(await self._call(
            "create", context, self.service.create_session, request.model or None,
            request.start_time if request.HasField("start_time") else None,
            request.history_window_s if request.HasField("history_window_s") else None))

    async def DescribeSession(self, request, context):
        return session_pb(await self._call("describe", context, self.service.describe_session,
                                           request.session_id))

    async def ResetSession(self, request, context):
        return session_pb(await self._call(
            "reset", context, self.service.reset_session, request.session_id,
            request.start_time if request.HasField("start_time") else None))

    async def CloseSession(self, request, context):
        await self._call("close", context, self.service.close_session, request.session_id)
        return pb.CloseSessionResponse()

    async def SendMessage(self, request, context):
        with self.metrics.timed("message", "grpc"):
            try:
                ack, belief = await self.service.send_message(message_in(request), "grpc")
            except ServiceError as e:
                await context.abort(_status(e), e.message)
            except Exception:  # a bug, not bad input
                log.exception("message failed")
                self.metrics.refused.labels("internal").inc()
                await context.abort(grpc.StatusCode.INTERNAL,
                                    "internal error in message (logged by the server)")
            return ack_pb(ack, request.sequence, belief)

    async def _stream_ack(self, req: pb.SensorMessage | Malformed) -> pb.Ack:
        if isinstance(req, Malformed):  # nothing to echo: sequence, session unknown
            self.metrics.refused.labels("bad_request").inc()
            return pb.Ack(error=pb.Error(code="INVALID_ARGUMENT", reason="bad_request",
                                         message=req.message))
        with self.metrics.timed("stream_message", "grpc"):
            try:
                ack, belief = await self.service.send_message(message_in(req), "grpc")
                return ack_pb(ack, req.sequence, belief)
            except ServiceError as e:
                error = pb.Error(code=e.grpc_code, reason=e.reason, message=e.message)
            except Exception as e:  # a bug, not bad input: the stream goes on
                log.exception("stream message failed")
                self.metrics.refused.labels("internal").inc()
                error = pb.Error(code="INTERNAL", reason="internal",
                                 message=f"internal error (logged by the server): {e}"[:300])
            return pb.Ack(sequence=req.sequence, session_id=req.session_id, sensor=req.sensor,
                          error=error)

    async def StreamMessages(self, request_iterator, context):
        """Messages that need an encoder batch run concurrently (up to ``stream_inflight``
        per stream, counting acks not yet sent); others are answered in order. The reader
        waits when the limit is reached, so HTTP/2 flow control pushes back on the client."""
        limit = asyncio.Semaphore(self.service.settings.stream_inflight)
        acks: asyncio.Queue = asyncio.Queue()
        done = object()
        tasks: set[asyncio.Task] = set()

        async def concurrent(req):
            acks.put_nowait(await self._stream_ack(req))

        async def reader():
            try:
                async for req in request_iterator:
                    await limit.acquire()
                    if not isinstance(req, Malformed) and \
                            self.service.is_batched(req.session_id, req.sensor):
                        task = asyncio.get_running_loop().create_task(concurrent(req))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    else:
                        acks.put_nowait(await self._stream_ack(req))
                while tasks:
                    await asyncio.wait(set(tasks))
            finally:
                acks.put_nowait(done)

        read = asyncio.get_running_loop().create_task(reader())
        try:
            while True:
                item = await acks.get()
                if item is done:
                    break
                yield item
                limit.release()
            await read  # re-raise a transport error of the request stream
        finally:
            read.cancel()
            for task in list(tasks):
                task.cancel()

    async def ReportAction(self, request, context):
        return action_pb(await self._call("report_action", context, self.service.report_action,
                                          request.session_id, request.timestamp,
                                          list(request.values)))

    async def GetAction(self, request, context):
        return action_pb(await self._call("get_action", context, self.service.policy_action,
                                          request.session_id, request.timestamp))

    async def GetBelief(self, request, context):
        return belief_pb(await self._call(
            "belief", context, self.service.belief, request.session_id,
            request.timestamp if request.HasField("timestamp") else None))


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Every method but health checking needs ``authorization: Bearer <token>``."""

    def __init__(self, token: str, service: EstimatorService):
        self.token, self.service = token, service

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS):
            return handler
        auth = next((v for k, v in details.invocation_metadata or () if k == "authorization"),
                    None)
        try:
            check_bearer(self.token, auth)
            return handler
        except Unauthenticated as e:
            self.service.metrics.refused.labels(e.reason).inc()
            message = e.message

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        kind = (handler.request_streaming, handler.response_streaming)
        make = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[kind]
        return make(deny, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)


async def build_grpc_server(service: EstimatorService, host: str, port: int
                            ) -> tuple[grpc.aio.Server, int, health_aio.HealthServicer]:
    """An unstarted grpc.aio server bound to host:port (0: a free port); returns it, the
    port it got and its health servicer."""
    s = service.settings
    token = s.token_value
    interceptors = [AuthInterceptor(token, service)] if token else []
    server = grpc.aio.server(interceptors=interceptors, options=server_options(s))
    add_estimator(EstimatorServicer(service), server,
                  lambda: service.metrics.refused.labels("bad_request").inc())
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME], server)
    bound = server.add_insecure_port(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}")
    if bound == 0:
        raise OSError(f"gRPC cannot listen on {host}:{port}")
    return server, bound, health


async def set_serving(health: health_aio.HealthServicer, serving: bool) -> None:
    status = (health_pb2.HealthCheckResponse.SERVING if serving else
              health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in ("", SERVICE_NAME):
        await health.set(name, status)
