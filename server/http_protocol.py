"""uvicorn's httptools protocol with the timeouts uvicorn lacks, so that slow and silent
clients cannot hold connections forever:

- a new connection must start a request within ``keepalive_s`` (uvicorn only arms its
  keep-alive timer after a response, so a client that connects and sends nothing, or
  went away half-open, was never closed);
- a request's headers must be complete ``header_timeout_s`` after its first byte
  (slow-loris: headers sent a byte at a time);
- its body must be complete ``body_timeout_s`` after the headers.

Between requests uvicorn's own ``timeout_keep_alive`` applies. On a timeout the
connection is closed; a route still waiting for the body sees a disconnect.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    keepalive_s = 5.0
    header_timeout_s = 10.0
    body_timeout_s = 30.0

    def _arm(self, seconds: float | None) -> None:
        timer = getattr(self, "_guard_timer", None)
        if timer is not None:
            timer.cancel()
        self._guard_timer: asyncio.TimerHandle | None = (
            None if seconds is None else self.loop.call_later(seconds, self._guard_expired))

    def _guard_expired(self) -> None:
        self._guard_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm(self.keepalive_s)

    def connection_lost(self, exc) -> None:
        self._arm(None)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.header_timeout_s)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self.body_timeout_s)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._arm(None)


def guarded_protocol(keepalive_s: float, header_timeout_s: float, body_timeout_s: float
                     ) -> type[GuardedHttpToolsProtocol]:
    """The protocol class with these timeouts (uvicorn builds one instance a connection)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {
        "keepalive_s": keepalive_s, "header_timeout_s": header_timeout_s,
        "body_timeout_s": body_timeout_s})
