"""HTTP client of the estimation service (JSON API under ``/v1``, httpx): the same typed
operations, deadlines, retries and errors as the gRPC clients.

    with HttpEstimatorClient("http://127.0.0.1:8000") as client:
        session = client.create_session(start_time=0.0)
        client.send_message(session.session_id, "image", 0.02, frame)  # PNG by default

Connection failures and 503 are UNAVAILABLE and retried with back-off; an error response
raises the ``EstimatorError`` subclass of its code with the server's reason and message.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from clients import affinity, types
from clients.errors import (
    DeadlineExceededError,
    EstimatorError,
    UnavailableError,
    from_http,
)
from clients.grpc_common import token_from_env
from clients.messages import Message, to_json
from clients.retry import Deadline, RetryPolicy, call_with_retry
from proto import wire
from proto.json_codec import from_json


def _session_in(path: str) -> str | None:
    """The session id of a ``/v1/sessions/{id}...`` path (None for other paths)."""
    parts = path.split("/")
    return parts[3] if len(parts) > 3 and parts[1:3] == ["v1", "sessions"] else None


class HttpEstimatorClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float | None = 5.0,
                 retry: RetryPolicy | None = None, transport: httpx.BaseTransport | None = None):
        """``base_url`` like ``http://127.0.0.1:8000``; ``token`` defaults to ``$VRKN_TOKEN``."""
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        token = token_from_env(token)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        # trust_env=False: no proxy from the environment for a service on a private network.
        self._http = httpx.Client(base_url=self.base_url, headers=headers, trust_env=False,
                                  transport=transport)

    def _request(self, method: str, path: str, *, json: Any = None,
                 params: dict | None = None, timeout: float | None = None,
                 expect_body: bool = True, session_id: str | None = None) -> Any:
        what = f"{method} {path}"
        # the balancer routes on the session's id: the path's, or the new one of a create
        headers = affinity.headers(session_id or _session_in(path))

        def attempt(left: float | None) -> Any:
            try:
                r = self._http.request(method, path, json=json, params=params,
                                       headers=headers, timeout=httpx.Timeout(left))
            except httpx.TimeoutException as e:
                raise DeadlineExceededError(f"{what}: no answer within the deadline ({e})"
                                            ) from None
            except httpx.TransportError as e:  # refused, reset: the server was not reached
                raise UnavailableError(f"{what}: {type(e).__name__}: {e}") from None
            if r.status_code < 400:
                return r.json() if expect_body else None
            try:
                body = r.json()
            except ValueError:
                body = r.text
            raise from_http(r.status_code, body)

        return call_with_retry(self.retry, self.timeout if timeout is None else timeout, what,
                               attempt)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HttpEstimatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- operations ----------------------------------------------------------------------
    def list_models(self, *, timeout: float | None = None) -> list[types.ModelInfo]:
        return [from_json(types.ModelInfo, m) for m in
                self._request("GET", "/v1/models", timeout=timeout)]

    def model(self, name: str | None = None, *, timeout: float | None = None
              ) -> types.ModelInfo:
        return types.pick_model(self.list_models(timeout=timeout), name)

    def create_session(self, model: str | None = None, start_time: float | None = None,
                       history_window_s: float | None = None, *,
                       session_id: str | None = None, timeout: float | None = None
                       ) -> types.SessionInfo:
        """``session_id``: the new session's id (default: a random one), sent in the
        affinity header so that a balancer routes the create where its calls will go."""
        body = {"model": model, "start_time": start_time, "history_window_s": history_window_s}
        return from_json(types.SessionInfo, self._request(
            "POST", "/v1/sessions", json=body, timeout=timeout,
            session_id=session_id or affinity.new_session_id()))

    def describe_session(self, session_id: str, *, timeout: float | None = None
                         ) -> types.SessionInfo:
        return from_json(types.SessionInfo, self._request(
            "GET", f"/v1/sessions/{session_id}", timeout=timeout))

    def reset_session(self, session_id: str, start_time: float | None = None, *,
                      timeout: float | None = None) -> types.SessionInfo:
        return from_json(types.SessionInfo, self._request(
            "POST", f"/v1/sessions/{session_id}/reset", json={"start_time": start_time},
            timeout=timeout))

    def close_session(self, session_id: str, *, timeout: float | None = None) -> None:
        self._request("DELETE", f"/v1/sessions/{session_id}", timeout=timeout,
                      expect_body=False)

    def send_message(self, session_id: str, sensor: str, timestamp: float, value: Any, *,
                     sequence: int = 0, return_belief: bool = False,
                     belief_detail: types.BeliefDetail | None = None,
                     encoding: str | None = None, timeout: float | None = None) -> types.Ack:
        """``belief_detail``: what the belief of ``return_belief`` carries (None: FULL)."""
        body = to_json(Message(session_id, sensor, timestamp, value, sequence, return_belief,
                               encoding, belief_detail))
        return types.Ack.of(from_json(wire.Ack, self._request(
            "POST", f"/v1/sessions/{session_id}/messages", json=body, timeout=timeout)))

    def report_action(self, session_id: str, timestamp: float,
                      values: Sequence[float] | np.ndarray, *, timeout: float | None = None
                      ) -> types.Action:
        body = {"timestamp": float(timestamp),
                "values": [float(v) for v in np.asarray(values, np.float32).reshape(-1)]}
        return from_json(types.Action, self._request(
            "POST", f"/v1/sessions/{session_id}/actions", json=body, timeout=timeout))

    def get_action(self, session_id: str, timestamp: float, *, timeout: float | None = None
                   ) -> types.Action:
        return from_json(types.Action, self._request(
            "POST", f"/v1/sessions/{session_id}/policy", json={"timestamp": float(timestamp)},
            timeout=timeout))

    def get_belief(self, session_id: str, timestamp: float | None = None, *,
                   detail: types.BeliefDetail | None = None, timeout: float | None = None
                   ) -> types.Belief:
        params = {"t": repr(float(timestamp))} if timestamp is not None else {}
        if detail is not None:
            params["detail"] = types.BeliefDetail.of(detail).json_name
        return from_json(types.Belief, self._request(
            "GET", f"/v1/sessions/{session_id}/belief", params=params or None,
            timeout=timeout))

    def health(self, *, timeout: float | None = None) -> bool:
        """True when ``/readyz`` answers 200 (models loaded, not shutting down)."""
        try:
            r = self._http.get("/readyz", timeout=self.timeout if timeout is None else timeout)
        except httpx.HTTPError as e:
            raise UnavailableError(f"GET /readyz: {type(e).__name__}: {e}") from None
        return r.status_code == 200

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        deadline = Deadline(timeout)
        attempt, last = 0, "no answer"
        while not deadline.expired():
            attempt += 1
            try:
                if self.health(timeout=1.0):
                    return
                last = "not ready"
            except EstimatorError as e:
                last = str(e)
            time.sleep(min(1.0, 0.05 * 1.5 ** min(attempt, 10)))
        raise UnavailableError(f"{self.base_url} not ready after {timeout:.0f} s ({last})")
