"""Deadlines and retries with exponential back-off: the one policy and the one retry loop
(``call_with_retry``, ``call_with_retry_async``) of the three clients.

A call has one deadline (``timeout`` seconds from its start) that covers every attempt and
every pause between attempts. Only UNAVAILABLE is retried (the server was not reached, or
is restarting): the other errors are answers. Jitter is drawn from a seeded generator, so
a run is reproducible.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from clients.errors import DeadlineExceededError, EstimatorError, UnavailableError

T = TypeVar("T")


@dataclass
class RetryPolicy:
    # 1: no retry. 8: the pauses (0.05 s doubling to 2 s, ~5 s in all) ride through a fleet
    # failover (the dead replica's lease, 3 s by default) within the 5 s default deadline.
    max_attempts: int = 8
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2  # each pause is scaled by a factor in [1 - jitter, 1 + jitter]
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        self._rng = random.Random(self.seed)

    def backoff(self, attempt: int) -> float:
        """The pause after failed attempt ``attempt`` (1-based)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return base * (1 + self.jitter * (2 * self._rng.random() - 1))

    @staticmethod
    def retryable(error: EstimatorError) -> bool:
        return isinstance(error, UnavailableError)


NO_RETRY = RetryPolicy(max_attempts=1)


class Deadline:
    """The time left of one call's budget (None: no deadline)."""

    def __init__(self, timeout: float | None):
        self.end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        return None if self.end is None else self.end - time.monotonic()

    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0

    def pause(self, seconds: float) -> float | None:
        """How long to sleep before the next attempt; None when the deadline would pass."""
        left = self.remaining()
        if left is not None and seconds >= left:
            return None
        return seconds


def plan_retry(policy: RetryPolicy, deadline: Deadline, attempt: int, error: EstimatorError,
               what: str) -> float:
    """Seconds to wait before retrying after ``error`` on attempt ``attempt``, or raise:
    the error itself when it is not retryable or attempts are used up, DeadlineExceeded
    when the pause would pass the deadline."""
    if not policy.retryable(error) or attempt >= policy.max_attempts:
        raise error
    pause = deadline.pause(policy.backoff(attempt))
    if pause is None:
        raise DeadlineExceededError(f"{what}: deadline reached after {attempt} attempt(s); "
                                    f"last error: {error}") from error
    return pause


def time_left(deadline: Deadline, number: int, what: str) -> float | None:
    """The seconds attempt ``number`` may take (None: no deadline); DeadlineExceeded when
    none are left."""
    left = deadline.remaining()
    if left is not None and left <= 0:
        raise DeadlineExceededError(f"{what}: deadline reached before attempt {number}")
    return left


def call_with_retry(policy: RetryPolicy, timeout: float | None, what: str,
                    attempt: Callable[[float | None], T]) -> T:
    """``attempt(seconds_left)`` until it answers: one deadline of ``timeout`` seconds for
    every attempt and pause, an EstimatorError it raises retried per ``policy`` (the one
    retry loop of the sync clients)."""
    deadline = Deadline(timeout)
    number = 0
    while True:
        number += 1
        left = time_left(deadline, number, what)
        try:
            return attempt(left)
        except EstimatorError as error:
            pause = plan_retry(policy, deadline, number, error, what)
        time.sleep(pause)


async def call_with_retry_async(policy: RetryPolicy, timeout: float | None, what: str,
                                attempt: Callable[[float | None], Awaitable[T]]) -> T:
    """``call_with_retry`` for the asyncio client (the pauses do not block the loop)."""
    deadline = Deadline(timeout)
    number = 0
    while True:
        number += 1
        left = time_left(deadline, number, what)
        try:
            return await attempt(left)
        except EstimatorError as error:
            pause = plan_retry(policy, deadline, number, error, what)
        await asyncio.sleep(pause)
