"""asyncio gRPC client of the estimation service (``grpc.aio``): the same operations,
deadlines, retries and errors as ``clients.grpc_client.EstimatorClient``.

    async with AsyncEstimatorClient("127.0.0.1:50051") as client:
        session = await client.create_session(start_time=0.0)
        ack = await client.send_message(session.session_id, "proprio", 0.01, [0.3],
                                        return_belief=True)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any

import grpc
import numpy as np

from clients import grpc_common as common
from clients import types
from clients.errors import DeadlineExceededError, EstimatorError, UnavailableError, from_grpc
from clients.messages import Message, to_pb
from clients.retry import Deadline, RetryPolicy, plan_retry


class AsyncEstimatorClient:
    def __init__(self, target: str, token: str | None = None, timeout: float | None = 5.0,
                 retry: RetryPolicy | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 options: Sequence[tuple[str, Any]] = ()):
        self.target = target
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self._metadata = common.metadata(common.token_from_env(token))
        opts = [*common.CHANNEL_OPTIONS, *options]
        self._channel = (grpc.aio.secure_channel(target, credentials, opts) if credentials
                         else grpc.aio.insecure_channel(target, opts))
        from proto.vrkn.estimator.v1 import estimator_pb2_grpc

        self._stub = estimator_pb2_grpc.EstimatorStub(self._channel)

    async def _invoke(self, call: common.Call, timeout: float | None) -> Any:
        name, request, convert = call
        method = getattr(self._stub, name)
        deadline = Deadline(self.timeout if timeout is None else timeout)
        attempt = 0
        while True:
            attempt += 1
            left = deadline.remaining()
            if left is not None and left <= 0:
                raise DeadlineExceededError(f"{name}: deadline reached before attempt "
                                            f"{attempt}")
            try:
                return convert(await method(request, timeout=left, metadata=self._metadata))
            except grpc.RpcError as e:
                error = from_grpc(e)
            await asyncio.sleep(plan_retry(self.retry, deadline, attempt, error, name))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncEstimatorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def list_models(self, *, timeout: float | None = None) -> list[types.ModelInfo]:
        return await self._invoke(common.list_models(), timeout)

    async def model(self, name: str | None = None, *, timeout: float | None = None
                    ) -> types.ModelInfo:
        return types.pick_model(await self.list_models(timeout=timeout), name)

    async def create_session(self, model: str | None = None, start_time: float | None = None,
                             history_window_s: float | None = None, *,
                             timeout: float | None = None) -> types.SessionInfo:
        return await self._invoke(common.create_session(model, start_time, history_window_s),
                                  timeout)

    async def describe_session(self, session_id: str, *, timeout: float | None = None
                               ) -> types.SessionInfo:
        return await self._invoke(common.describe_session(session_id), timeout)

    async def reset_session(self, session_id: str, start_time: float | None = None, *,
                            timeout: float | None = None) -> types.SessionInfo:
        return await self._invoke(common.reset_session(session_id, start_time), timeout)

    async def close_session(self, session_id: str, *, timeout: float | None = None) -> None:
        await self._invoke(common.close_session(session_id), timeout)

    async def send_message(self, session_id: str, sensor: str, timestamp: float, value: Any,
                           *, sequence: int = 0, return_belief: bool = False,
                           encoding: str | None = None, timeout: float | None = None
                           ) -> types.Ack:
        msg = Message(session_id, sensor, timestamp, value, sequence, return_belief, encoding)
        return await self._invoke(common.send_message(msg), timeout)

    async def stream_messages(self, messages: Iterable[Message] | AsyncIterable[Message], *,
                              timeout: float | None = None) -> AsyncIterator[types.Ack]:
        """One bidirectional stream; yields an Ack per message in completion order (refused
        messages as Acks with ``error``). Not retried; ``timeout`` bounds the stream."""

        async def requests():
            if isinstance(messages, AsyncIterable):
                async for m in messages:
                    yield to_pb(m)
            else:
                for m in messages:
                    yield to_pb(m)

        call = self._stub.StreamMessages(requests(), timeout=timeout, metadata=self._metadata)
        try:
            async for ack in call:
                yield types.ack_from_pb(ack)
        except grpc.RpcError as e:
            raise from_grpc(e) from None
        finally:
            call.cancel()

    async def report_action(self, session_id: str, timestamp: float,
                            values: Sequence[float] | np.ndarray, *,
                            timeout: float | None = None) -> types.Action:
        return await self._invoke(common.report_action(session_id, timestamp, values), timeout)

    async def get_action(self, session_id: str, timestamp: float, *,
                         timeout: float | None = None) -> types.Action:
        return await self._invoke(common.get_action(session_id, timestamp), timeout)

    async def get_belief(self, session_id: str, timestamp: float | None = None, *,
                         timeout: float | None = None) -> types.Belief:
        return await self._invoke(common.get_belief(session_id, timestamp), timeout)

    async def health(self, service: str = "", *, timeout: float | None = None) -> bool:
        from grpc_health.v1 import health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            return common.is_serving(await stub.Check(
                common.health_request(service),
                timeout=self.timeout if timeout is None else timeout))
        except grpc.RpcError as e:
            raise from_grpc(e) from None

    async def wait_until_ready(self, timeout: float = 30.0) -> None:
        deadline = Deadline(timeout)
        attempt, last = 0, "no answer"
        while not deadline.expired():
            attempt += 1
            try:
                if await self.health(timeout=min(1.0, max(deadline.remaining() or 1.0, 0.01))):
                    return
                last = "NOT_SERVING"
            except EstimatorError as e:
                last = str(e)
            await asyncio.sleep(min(1.0, 0.05 * 1.5 ** min(attempt, 10)))
        raise UnavailableError(f"{self.target} not ready after {timeout:.0f} s ({last})")
