"""Session affinity: every call that names a session carries its id in the
``x-session-id`` header (gRPC metadata, HTTP header), so that a balancer in front of a
fleet of replicas routes all of a session's calls to the replica that holds it
(docs/service.md, "Running a fleet"). A new session's id is chosen here, by the client,
and sent with CreateSession: the create lands where the session's later calls will."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from typing import Any

SESSION_HEADER = "x-session-id"


def new_session_id() -> str:
    """A fresh random id (128 bits), for CreateSession."""
    return secrets.token_hex(16)


def session_of(request: Any) -> str:
    """The session a gRPC request names ('' for none: ListModels, CreateSession)."""
    return getattr(request, "session_id", "") or ""


def with_session(metadata: tuple[tuple[str, str], ...], session_id: str | None
                 ) -> tuple[tuple[str, str], ...]:
    """``metadata`` plus the affinity header when ``session_id`` is set."""
    return (*metadata, (SESSION_HEADER, session_id)) if session_id else metadata


def headers(session_id: str | None) -> dict[str, str]:
    return {SESSION_HEADER: session_id} if session_id else {}


def first_and_rest(messages: Iterable[Any], session_id: str | None
                   ) -> tuple[list[Any], Iterator[Any]]:
    """For a stream without an explicit ``session_id``: its first message (to name the
    stream's session; [] when empty) and the rest; with one, nothing is read ahead."""
    it = iter(messages)
    if session_id:
        return [], it
    first = next(it, None)
    return ([] if first is None else [first]), it
