"""The Python clients set the affinity header (``x-session-id``) on every call that names a
session, so that a balancer routes it to the replica holding the session: the id of the
session named; for CreateSession the new id, chosen by the client (or given); for a stream
the first message's session (or the one given). Calls naming no session carry none.

Recorded where the clients hand a call to the transport (a stub / an httpx transport that
records and answers UNAVAILABLE, with one attempt); the fleet test (tests/scale) shows the
header routing real calls through HAProxy."""

from __future__ import annotations

import asyncio
import re

import grpc
import httpx
import pytest

from clients import (
    AsyncEstimatorClient,
    EstimatorClient,
    HttpEstimatorClient,
    Message,
    RetryPolicy,
    UnavailableError,
)
from clients.affinity import SESSION_HEADER

ONE_TRY = RetryPolicy(max_attempts=1)
SID = "robot-7"


class Unavailable(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "recorded"


class RecordingStub:
    """Records (method, affinity header) of every call, then fails it with UNAVAILABLE;
    ``aio``: the methods are coroutines (unary) / async iterators (stream)."""

    def __init__(self, aio: bool = False):
        self.calls: list[tuple[str, str | None]] = []
        self.aio = aio

    def _record(self, name, metadata):
        self.calls.append((name, dict(metadata or ()).get(SESSION_HEADER)))

    def __getattr__(self, name):
        if name == "StreamMessages":
            return self._stream

        def unary(request, timeout=None, metadata=None):
            self._record(name, metadata)
            if self.aio:
                async def fail():
                    raise Unavailable()
                return fail()
            raise Unavailable()

        return unary

    def _stream(self, requests, timeout=None, metadata=None):
        self._record("StreamMessages", metadata)
        stub = self

        class Call:
            def __iter__(self):
                raise Unavailable()

            def __aiter__(self):
                return self

            async def __anext__(self):
                raise Unavailable()

            def cancel(self):
                stub.cancelled = True

        return Call()


def session_calls(client):
    """Every operation that names session SID, as (name, zero-argument call)."""
    msg = Message(SID, "proprio", 0.01, [0.1])
    return [
        ("DescribeSession", lambda: client.describe_session(SID)),
        ("ResetSession", lambda: client.reset_session(SID, 0.0)),
        ("CloseSession", lambda: client.close_session(SID)),
        ("SendMessage", lambda: client.send_message(SID, "proprio", 0.01, [0.1])),
        ("ReportAction", lambda: client.report_action(SID, 0.01, [0.0])),
        ("GetAction", lambda: client.get_action(SID, 0.01)),
        ("GetBelief", lambda: client.get_belief(SID)),
        ("StreamMessages", lambda: client.stream_messages([msg, msg])),
    ]


def test_grpc_sync_client_sends_the_session_header_on_every_session_call():
    with EstimatorClient("127.0.0.1:1", retry=ONE_TRY) as client:
        client._stub = stub = RecordingStub()
        for name, call in session_calls(client):
            with pytest.raises(UnavailableError):
                result = call()
                if name == "StreamMessages":
                    list(result)
        with pytest.raises(UnavailableError):
            client.create_session(start_time=0.0)
        with pytest.raises(UnavailableError):
            client.create_session(session_id="chosen-1")
        with pytest.raises(UnavailableError):
            list(client.stream_messages(iter([]), session_id="given"))
        with pytest.raises(UnavailableError):
            client.list_models()
    named = [n for n, _ in session_calls(client)]
    assert stub.calls[:len(named)] == [(n, SID) for n in named]
    (c1, new), (c2, chosen), (s, given), (lm, none) = stub.calls[len(named):]
    assert (c1, c2, s, lm) == ("CreateSession", "CreateSession", "StreamMessages", "ListModels")
    assert re.fullmatch("[0-9a-f]{32}", new) and chosen == "chosen-1" and given == "given"
    assert none is None


def test_a_create_keeps_its_id_across_retries():
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, jitter=0)
    with EstimatorClient("127.0.0.1:1", retry=policy) as client:
        client._stub = stub = RecordingStub()
        with pytest.raises(UnavailableError):
            client.create_session()
    ids = [sid for _, sid in stub.calls]
    assert len(ids) == 3 and len(set(ids)) == 1 and ids[0]


def test_grpc_asyncio_client_sends_the_session_header_on_every_session_call():
    async def main():
        async with AsyncEstimatorClient("127.0.0.1:1", retry=ONE_TRY) as client:
            client._stub = stub = RecordingStub(aio=True)
            for name, call in session_calls(client):
                with pytest.raises(UnavailableError):
                    if name == "StreamMessages":
                        async for _ in call():
                            pass
                    else:
                        await call()
            with pytest.raises(UnavailableError):
                await client.create_session()
            with pytest.raises(UnavailableError):
                await client.list_models()
            return stub.calls

    calls = asyncio.run(main())
    named = [n for n, _ in session_calls(None)]
    assert calls[:len(named)] == [(n, SID) for n in named]
    (create, new), (lm, none) = calls[len(named):]
    assert create == "CreateSession" and re.fullmatch("[0-9a-f]{32}", new)
    assert lm == "ListModels" and none is None


def test_http_client_sends_the_session_header_on_every_session_call():
    seen: list[tuple[str, str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.headers.get(SESSION_HEADER)))
        return httpx.Response(503, json={"error": {"code": "UNAVAILABLE", "reason": "x",
                                                   "message": "recorded"}})

    client = HttpEstimatorClient("http://test", retry=ONE_TRY,
                                 transport=httpx.MockTransport(handler))
    calls = [c for n, c in session_calls(client) if n != "StreamMessages"]  # no HTTP stream
    for call in calls:
        with pytest.raises(UnavailableError):
            call()
    with pytest.raises(UnavailableError):
        client.create_session(session_id="chosen-2")
    with pytest.raises(UnavailableError):
        client.create_session()
    with pytest.raises(UnavailableError):
        client.list_models()
    client.close()
    assert [(p.startswith(f"/v1/sessions/{SID}"), h) for _, p, h in seen[:len(calls)]] == \
        [(True, SID)] * len(calls)
    (_, p1, chosen), (_, p2, new), (_, p3, none) = seen[len(calls):]
    assert p1 == p2 == "/v1/sessions" and chosen == "chosen-2"
    assert re.fullmatch("[0-9a-f]{32}", new) and p3 == "/v1/models" and none is None
