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

from proto.pb_codec import to_pb
from proto.vrkn.estimator.v1 import estimator_pb2 as pb
from proto.vrkn.estimator.v1 import estimator_pb2_grpc as pb_grpc
from proto.wire import Ack, BeliefDetail, Error, answer
from server.auth import check_bearer
from server.errors import InvalidArgument, ServiceError, Unauthenticated
from server.grpc_guard import Malformed, add_estimator, server_options
from server.payloads import Payload
from server.resources import model_infos
from server.service import EstimatorService, SensorMessageIn

log = logging.getLogger("server.grpc")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Estimator"].full_name
OPEN_METHODS = ("/grpc.health.v1.Health/",)  # no token needed (load balancers, probes)
SESSION_HEADER = "x-session-id"  # issue 14: session affinity (docs/service.md, fleet)


# -- conversions (resources: proto.pb_codec; requests here) ------------------------
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
                           req.return_belief, detail_of(req.belief_detail))


def detail_of(value: int) -> BeliefDetail:
    """A request's ``BeliefDetail`` (unspecified: FULL); a number that is no level (an
    open proto3 enum carries any) is INVALID_ARGUMENT."""
    try:
        return BeliefDetail.of(value)
    except ValueError as e:
        raise InvalidArgument(str(e), "bad_detail") from None


def _status(e: ServiceError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, e.grpc_code, grpc.StatusCode.UNKNOWN)


class EstimatorServicer(pb_grpc.EstimatorServicer):
    def __init__(self, service: EstimatorService):
        self.service = service
        self.metrics = service.metrics

    async def _call(self, op: str, context, fn, *args):
        with self.metrics.timed(op, "grpc"):
            try:
                result = fn(*args)
                return await result if asyncio.iscoroutine(result) else result
            except ServiceError as e:
                await context.abort(_status(e), e.message)
            except Exception:  # a bug, not bad input: logged, and a clean status
                log.exception("%s failed", op)
                self.metrics.refused.labels("internal").inc()
                await context.abort(grpc.StatusCode.INTERNAL,
                                    f"internal error in {op} (logged by the server)")

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[to_pb(m) for m in model_infos(
            self.service.models, self.service.registry.default_model)])

    async def CreateSession(self, request, context):
        # issue 14: the id the client chose, in the header the balancer routes on
        sid = next((v for k, v in context.invocation_metadata() or () if k == SESSION_HEADER),
                   None)
        return to_pb(await self._call(
            "create", context, self.service.create_session, request.model or None,
            request.start_time if request.HasField("start_time") else None,
            request.history_window_s if request.HasField("history_window_s") else None, sid))

    async def DescribeSession(self, request, context):
        return to_pb(await self._call("describe", context, self.service.describe_session,
                                      request.session_id))

    async def ResetSession(self, request, context):
        return to_pb(await self._call(
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
            return to_pb(answer(ack, request.sequence, belief))

    async def _stream_ack(self, req: pb.SensorMessage | Malformed) -> pb.Ack:
        if isinstance(req, Malformed):  # nothing to echo: sequence, session unknown
            self.metrics.refused.labels("bad_request").inc()
            return to_pb(Ack(session_id="", sensor="", timestamp=0.0, tick=0, applied=False,
                             newest_tick=0, error=Error("INVALID_ARGUMENT", "bad_request",
                                                        req.message)))
        with self.metrics.timed("stream_message", "grpc"):
            try:
                ack, belief = await self.service.send_message(message_in(req), "grpc")
                return to_pb(answer(ack, req.sequence, belief))
            except ServiceError as e:
                error = Error(e.grpc_code, e.reason, e.message)
            except Exception as e:  # a bug, not bad input: the stream goes on
                log.exception("stream message failed")
                self.metrics.refused.labels("internal").inc()
                error = Error("INTERNAL", "internal",
                              f"internal error (logged by the server): {e}"[:300])
            return to_pb(Ack(session_id=req.session_id, sensor=req.sensor,
                             timestamp=req.timestamp, tick=0, applied=False, newest_tick=0,
                             sequence=req.sequence, error=error))

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
        return to_pb(await self._call("report_action", context, self.service.report_action,
                                      request.session_id, request.timestamp,
                                      list(request.values)))

    async def GetAction(self, request, context):
        return to_pb(await self._call("get_action", context, self.service.policy_action,
                                      request.session_id, request.timestamp))

    async def GetBelief(self, request, context):
        belief = await self._call(
            "belief", context, lambda: self.service.belief(
                request.session_id,
                request.timestamp if request.HasField("timestamp") else None,
                detail_of(request.detail)))
        return to_pb(belief)


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
