"""asyncio gRPC client of the estimation service (``grpc.aio``): the same operations,
deadlines, retries and errors as ``clients.grpc_client.EstimatorClient``.

    async with AsyncEstimatorClient("127.0.0.1:50051") as client:
        session = await client.create_session(start_time=0.0)
        ack = await client.send_message(session.session_id, "proprio", 0.01, [0.3],
                                        return_belief=True)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any

import grpc
import numpy as np

from clients import affinity, types
from clients import grpc_common as common
from clients.errors import EstimatorError, UnavailableError, from_grpc
from clients.messages import Message, to_pb
from clients.retry import Deadline, RetryPolicy, call_with_retry_async


async def _aiter(messages: Iterable[Message]) -> AsyncIterator[Message]:
    for m in messages:
        yield m


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

    async def _invoke(self, call: common.Call, timeout: float | None,
                      session_id: str | None = None) -> Any:
        name, request, convert = call
        method = getattr(self._stub, name)
        # the balancer routes on the session's id (CreateSession: the new id, given here)
        metadata = affinity.with_session(self._metadata,
                                         session_id or affinity.session_of(request))

        async def attempt(left: float | None) -> Any:
            try:
                return convert(await method(request, timeout=left, metadata=metadata))
            except grpc.RpcError as e:
                raise from_grpc(e) from None

        return await call_with_retry_async(self.retry, self.timeout if timeout is None
                                           else timeout, name, attempt)

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
                             session_id: str | None = None, timeout: float | None = None
                             ) -> types.SessionInfo:
        """``session_id``: the new session's id (default: a random one), sent in the
        affinity header so that a balancer routes the create where its calls will go."""
        return await self._invoke(common.create_session(model, start_time, history_window_s),
                                  timeout, session_id or affinity.new_session_id())

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
                           belief_detail: types.BeliefDetail | None = None,
                           encoding: str | None = None, timeout: float | None = None
                           ) -> types.Ack:
        """``belief_detail``: what the belief of ``return_belief`` carries (None: FULL)."""
        msg = Message(session_id, sensor, timestamp, value, sequence, return_belief, encoding,
                      belief_detail)
        return await self._invoke(common.send_message(msg), timeout)

    async def stream_messages(self, messages: Iterable[Message] | AsyncIterable[Message], *,
                              timeout: float | None = None, session_id: str | None = None
                              ) -> AsyncIterator[types.Ack]:
        """One bidirectional stream; yields an Ack per message in completion order (refused
        messages as Acks with ``error``). Not retried; ``timeout`` bounds the stream. A
        stream carries one session: its id goes in the affinity header (``session_id``,
        else the first message's, awaited before the stream opens)."""
        source = aiter(messages if isinstance(messages, AsyncIterable) else _aiter(messages))
        first: list[Message] = []
        if not session_id:
            with contextlib.suppress(StopAsyncIteration):
                first.append(await anext(source))

        async def requests():
            for m in first:
                yield to_pb(m)
            async for m in source:
                yield to_pb(m)

        sid = session_id or (first[0].session_id if first else None)
        call = self._stub.StreamMessages(requests(), timeout=timeout,
                                         metadata=affinity.with_session(self._metadata, sid))
        try:
            async for ack in call:
                yield common.ack_from_pb(ack)
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
                         detail: types.BeliefDetail | None = None,
                         timeout: float | None = None) -> types.Belief:
        return await self._invoke(common.get_belief(session_id, timestamp, detail), timeout)

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
