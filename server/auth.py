"""Bearer-token check shared by both transports (constant-time comparison)."""

from __future__ import annotations

import hmac

from server.errors import Unauthenticated


def check_bearer(expected: str | None, authorization: str | None) -> None:
    """Nothing when no token is configured; else ``authorization`` must be
    ``Bearer <token>``."""
    if expected is None:
        return
    if not authorization:
        raise Unauthenticated("missing bearer token (authorization: Bearer <token>)",
                              "missing_token")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                             expected.encode()):
        raise Unauthenticated("wrong bearer token", "wrong_token")
