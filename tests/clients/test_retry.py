"""Deadlines and retries with back-off: only UNAVAILABLE is retried, every attempt and pause
fits in the call's deadline, and the back-off is seeded."""

from __future__ import annotations

import socket
import time

import grpc
import httpx
import pytest

from clients import (
    DeadlineExceededError,
    EstimatorClient,
    HttpEstimatorClient,
    NotFoundError,
    RetryPolicy,
    UnavailableError,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class FlakyStub:
    """Fails with ``errors`` in order, then answers."""

    def __init__(self, errors, answer):
        self.errors, self.answer, self.calls = list(errors), answer, []

    def __getattr__(self, name):
        def method(request, timeout=None, metadata=None):
            self.calls.append(timeout)
            if self.errors:
                raise self.errors.pop(0)
            return self.answer
        return method


def test_backoff_is_exponential_capped_and_seeded():
    p = RetryPolicy(initial_backoff_s=0.1, multiplier=2, max_backoff_s=0.5, jitter=0.2, seed=3)
    pauses = [p.backoff(k) for k in range(1, 7)]
    for k, pause in enumerate(pauses, 1):
        base = min(0.5, 0.1 * 2 ** (k - 1))
        assert 0.8 * base <= pause <= 1.2 * base
    again = RetryPolicy(initial_backoff_s=0.1, multiplier=2, max_backoff_s=0.5, jitter=0.2,
                        seed=3)
    assert [again.backoff(k) for k in range(1, 7)] == pauses
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_unavailable_is_retried_until_it_answers():
    from proto.vrkn.estimator.v1 import estimator_pb2 as pb

    with EstimatorClient("127.0.0.1:1", retry=RetryPolicy(initial_backoff_s=0.01)) as c:
        c._stub = FlakyStub([FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down")] * 2,
                            pb.ListModelsResponse())
        assert c.list_models() == []
        assert len(c._stub.calls) == 3
        assert c._stub.calls[0] > c._stub.calls[2] > 0  # each attempt gets what is left


def test_other_errors_are_not_retried():
    with EstimatorClient("127.0.0.1:1", retry=RetryPolicy(initial_backoff_s=0.01)) as c:
        c._stub = FlakyStub([FakeRpcError(grpc.StatusCode.NOT_FOUND, "no session 'x'")], None)
        with pytest.raises(NotFoundError, match="no session 'x'"):
            c.get_belief("x")
        assert len(c._stub.calls) == 1


@pytest.mark.parametrize("kind", ["grpc", "http"])
def test_nothing_listening_gives_unavailable_after_the_attempts(kind):
    port = free_port()
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, jitter=0)
    cls, target = ((EstimatorClient, f"127.0.0.1:{port}") if kind == "grpc" else
                   (HttpEstimatorClient, f"http://127.0.0.1:{port}"))
    t0 = time.monotonic()
    with cls(target, timeout=10.0, retry=policy) as c, pytest.raises(UnavailableError):
        c.list_models()
    assert 0.15 <= time.monotonic() - t0 < 5  # pauses 0.05 + 0.1


@pytest.mark.parametrize("kind", ["grpc", "http"])
def test_the_deadline_bounds_attempts_and_pauses(kind):
    port = free_port()
    policy = RetryPolicy(max_attempts=100, initial_backoff_s=0.1, max_backoff_s=0.1)
    cls, target = ((EstimatorClient, f"127.0.0.1:{port}") if kind == "grpc" else
                   (HttpEstimatorClient, f"http://127.0.0.1:{port}"))
    t0 = time.monotonic()
    with cls(target, timeout=0.5, retry=policy) as c:
        with pytest.raises(DeadlineExceededError, match="deadline"):
            c.get_belief("s", timeout=0.5)
    assert time.monotonic() - t0 < 2


def test_http_503_is_retried_and_errors_map():
    answers = [httpx.Response(503, json={"error": {"code": "UNAVAILABLE", "reason":
                                                   "shutting_down", "message": "draining"}}),
               httpx.Response(200, json=[])]
    seen = []

    def handler(request):
        seen.append(request)
        if answers:
            return answers.pop(0)
        return httpx.Response(404, json={"error": {"code": "NOT_FOUND", "reason":
                                                   "unknown_session", "message": "no s"}})

    c = HttpEstimatorClient("http://test", retry=RetryPolicy(initial_backoff_s=0.01),
                            transport=httpx.MockTransport(handler))
    assert c.list_models() == [] and len(seen) == 2
    with pytest.raises(NotFoundError, match="no s") as e:
        c.describe_session("s")
    assert e.value.reason == "unknown_session" and e.value.http_status == 404
    assert len(seen) == 3  # not retried
    c.close()
