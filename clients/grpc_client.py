"""Synchronous gRPC client of the estimation service.

    from clients import EstimatorClient
    with EstimatorClient("127.0.0.1:50051", token=None, timeout=2.0) as client:
        session = client.create_session(start_time=0.0)
        client.send_message(session.session_id, "proprio", 0.01, [0.3])
        action = client.get_action(session.session_id, 0.01)

Every unary call has a deadline (``timeout`` seconds, per call or the client's default)
covering all its attempts; UNAVAILABLE is retried with exponential back-off
(``clients.retry.RetryPolicy``). Errors raise ``clients.errors.EstimatorError`` subclasses
with the server's message.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np

from clients import affinity, types
from clients import grpc_common as common
from clients.errors import EstimatorError, UnavailableError, from_grpc
from clients.messages import Message, to_pb
from clients.retry import Deadline, RetryPolicy, call_with_retry


class EstimatorClient:
    def __init__(self, target: str, token: str | None = None, timeout: float | None = 5.0,
                 retry: RetryPolicy | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 options: Sequence[tuple[str, Any]] = ()):
        """``target`` is ``host:port``; ``token`` defaults to ``$VRKN_TOKEN``; ``timeout``
        is the default deadline of a unary call (None: none); ``credentials`` make a TLS
        channel (the server itself speaks plain gRPC behind a TLS proxy)."""
        self.target = target
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self._metadata = common.metadata(common.token_from_env(token))
        opts = [*common.CHANNEL_OPTIONS, *options]
        self._channel = (grpc.secure_channel(target, credentials, opts) if credentials
                         else grpc.insecure_channel(target, opts))
        from proto.vrkn.estimator.v1 import estimator_pb2_grpc

        self._stub = estimator_pb2_grpc.EstimatorStub(self._channel)

    # -- plumbing ------------------------------------------------------------------------
    def _invoke(self, call: common.Call, timeout: float | None, retry: RetryPolicy | None = None,
                session_id: str | None = None) -> Any:
        name, request, convert = call
        method = getattr(self._stub, name)
        # the balancer routes on the session's id (CreateSession: the new id, given here)
        metadata = affinity.with_session(self._metadata,
                                         session_id or affinity.session_of(request))

        def attempt(left: float | None) -> Any:
            try:
                return convert(method(request, timeout=left, metadata=metadata))
            except grpc.RpcError as e:
                raise from_grpc(e) from None

        return call_with_retry(retry or self.retry, self.timeout if timeout is None
                               else timeout, name, attempt)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> EstimatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- operations ----------------------------------------------------------------------
    def list_models(self, *, timeout: float | None = None) -> list[types.ModelInfo]:
        return self._invoke(common.list_models(), timeout)

    def model(self, name: str | None = None, *, timeout: float | None = None
              ) -> types.ModelInfo:
        """The named model, or the server's default one."""
        return types.pick_model(self.list_models(timeout=timeout), name)

    def create_session(self, model: str | None = None, start_time: float | None = None,
                       history_window_s: float | None = None, *,
                       session_id: str | None = None, timeout: float | None = None
                       ) -> types.SessionInfo:
        """``session_id``: the new session's id (default: a random one), sent in the
        affinity header so that a balancer routes the create where its calls will go."""
        return self._invoke(common.create_session(model, start_time, history_window_s),
                            timeout, session_id=session_id or affinity.new_session_id())

    def describe_session(self, session_id: str, *, timeout: float | None = None
                         ) -> types.SessionInfo:
        return self._invoke(common.describe_session(session_id), timeout)

    def reset_session(self, session_id: str, start_time: float | None = None, *,
                      timeout: float | None = None) -> types.SessionInfo:
        return self._invoke(common.reset_session(session_id, start_time), timeout)

    def close_session(self, session_id: str, *, timeout: float | None = None) -> None:
        self._invoke(common.close_session(session_id), timeout)

    def send_message(self, session_id: str, sensor: str, timestamp: float, value: Any, *,
                     sequence: int = 0, return_belief: bool = False,
                     belief_detail: types.BeliefDetail | None = None,
                     encoding: str | None = None, timeout: float | None = None) -> types.Ack:
        """One sensor message: an image (uint8 HxWxC, sent as ``encoding`` png/jpeg/raw),
        encoded image bytes, or a vector. ``return_belief``: the ack carries the belief
        at the message's tick; ``belief_detail``: what that belief carries (``BeliefDetail.LATENT``,
        ``STATE`` or ``FULL``; None: FULL, the most expensive: pay only for what is used)."""
        msg = Message(session_id, sensor, timestamp, value, sequence, return_belief, encoding,
                      belief_detail)
        return self._invoke(common.send_message(msg), timeout)

    def stream_messages(self, messages: Iterable[Message], *, timeout: float | None = None,
                        session_id: str | None = None) -> Iterator[types.Ack]:
        """Sensor messages over one bidirectional stream; yields one Ack per message in
        completion order (match them by ``sequence``). A refused message comes back as an
        Ack with ``error`` set and the stream goes on. Not retried (the messages are
        consumed); ``timeout`` (default: none) bounds the whole stream. A stream carries
        one session: its id goes in the affinity header (``session_id``, else the first
        message's, which is then waited for before the stream opens)."""
        first, rest = affinity.first_and_rest(messages, session_id)
        requests = (to_pb(m) for m in itertools.chain(first, rest))
        sid = session_id or (first[0].session_id if first else None)
        call = self._stub.StreamMessages(requests, timeout=timeout,
                                         metadata=affinity.with_session(self._metadata, sid))
        try:
            for ack in call:
                yield common.ack_from_pb(ack)
        except grpc.RpcError as e:
            raise from_grpc(e) from None
        finally:
            call.cancel()

    def report_action(self, session_id: str, timestamp: float,
                      values: Sequence[float] | np.ndarray, *, timeout: float | None = None
                      ) -> types.Action:
        return self._invoke(common.report_action(session_id, timestamp, values), timeout)

    def get_action(self, session_id: str, timestamp: float, *, timeout: float | None = None
                   ) -> types.Action:
        """The policy's action on the belief at ``timestamp`` (recorded as applied)."""
        return self._invoke(common.get_action(session_id, timestamp), timeout)

    def get_belief(self, session_id: str, timestamp: float | None = None, *,
                   detail: types.BeliefDetail | None = None, timeout: float | None = None
                   ) -> types.Belief:
        """The belief at ``timestamp`` (None: the newest tick) with what ``detail`` asks
        for (None: FULL)."""
        return self._invoke(common.get_belief(session_id, timestamp, detail), timeout)

    def health(self, service: str = "", *, timeout: float | None = None) -> bool:
        """True when the gRPC health service reports SERVING."""
        from grpc_health.v1 import health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            return common.is_serving(stub.Check(common.health_request(service),
                                                timeout=self.timeout if timeout is None
                                                else timeout))
        except grpc.RpcError as e:
            raise from_grpc(e) from None

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Poll health (with back-off) until SERVING; raise UnavailableError after
        ``timeout`` seconds."""
        deadline = Deadline(timeout)
        attempt, last = 0, "no answer"
        while not deadline.expired():
            attempt += 1
            try:
                if self.health(timeout=min(1.0, max(deadline.remaining() or 1.0, 0.01))):
                    return
                last = "NOT_SERVING"
            except EstimatorError as e:
                last = str(e)
            time.sleep(min(1.0, 0.05 * 1.5 ** min(attempt, 10)))
        raise UnavailableError(f"{self.target} not ready after {timeout:.0f} s ({last})")
