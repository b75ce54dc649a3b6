"""Dynamic batching across sessions (as inference servers do): encoder runs, and the filter
work of a model (``server.engine``).

Work of every session queues in a ``Batcher``. When nothing runs, the queue is taken at
the end of the loop iteration that queued it (up to ``max_batch``; what else that
iteration queues joins): ``prepare`` on the event loop, ``compute`` in a worker thread
(ONNX Runtime releases the GIL, so the loop keeps receiving), ``finish`` back on the loop.
What arrives meanwhile forms the next batch, so batches grow with the load by themselves
and a lone request never waits. ``window_s`` > 0 also holds each batch that long for more
work (unless ``max_batch`` items wait already); with ``adaptive`` only after a batch of
several items, a sign of load, so that a single robot still runs at once.

A lone robot's batch runs on the loop instead, since its compute is cheaper than the two
thread hops (a proprio belief: about 0.2–0.4 ms of ONNX and numpy against about 0.3 ms of
hand-offs: the worker's wake-up, the loop's, the GIL), when

- it is one item, and so was the batch before (several at once: load, where batches in
  the worker pay off; computing one at a time on the loop would stop them forming),
- the running mean compute time of one-item batches is at most ``inline_s``, and
- the loop's recent time in such batches (decaying over ``INLINE_TAU_S``) stays under
  ``inline_share``, so that the loop keeps to I/O.

A one-item batch while that mean is unknown goes to the worker (and measures it).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from functools import partial
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

from server.errors import ResourceExhausted, ServiceError, Unavailable

Item = TypeVar("Item")
Work = TypeVar("Work")
Out = TypeVar("Out")
INLINE_TAU_S = 1.0  # the loop's share of time in inline batches: decays over this


class BatchTimes(NamedTuple):
    """Where one batch's time went (seconds), as ``observe`` gets it after each batch."""

    size: int
    waited: float  # its oldest item: queued -> compute starts (the batch before, the worker)
    compute: float
    returned: float  # compute done -> the loop takes the answers (0 inline: the loop, busy)


class Batcher(Generic[Item, Work, Out]):
    def __init__(self, name: str, executor: Executor,
                 prepare: Callable[[list[Item]], Work], compute: Callable[[Work], Out],
                 finish: Callable[[Work, Out], Sequence[Any]], max_batch: int = 64,
                 window_s: float = 0.0, max_queue: int = 1024,
                 observe: Callable[[BatchTimes], None] | None = None, adaptive: bool = False,
                 inline_s: float = 0.0, inline_share: float = 0.5):
        if max_batch < 1 or max_queue < 1 or window_s < 0 or inline_s < 0 or \
                not 0 <= inline_share <= 1:
            raise ValueError("batcher: max_batch and max_queue must be positive, the window "
                             "and the inline budget not negative, the inline share in [0, 1]")
        self.name, self._executor = name, executor
        self._prepare, self._compute, self._finish = prepare, compute, finish
        self.max_batch, self.window_s, self.max_queue = max_batch, window_s, max_queue
        self.adaptive, self.inline_s, self.inline_share = adaptive, inline_s, inline_share
        self._single: float | None = None  # running mean compute seconds, one-item batches
        self._inline_busy, self._inline_at = 0.0, 0.0  # decayed seconds inline; when
        self._observe = observe  # BatchTimes after each batch
        self._queue: deque[tuple[Item, asyncio.Future, float]] = deque()  # (.., queued at)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: asyncio.Future | None = None  # the batch in the worker thread
        self._timer: asyncio.Handle | None = None  # the launch to come (call_soon/later)
        self._last_size = 0
        self.failure_reason = "batch_failed"
        self.batches = 0
        self.items = 0
        self.inline_batches = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        """Refuse new work, fail what is queued, let the running batch finish."""
        loop, self._loop = self._loop, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queue:
            _, fut, _ = self._queue.popleft()
            if not fut.done():
                fut.set_exception(Unavailable("the server is shutting down", "shutdown"))
        if self._running is not None and loop is not None:
            done = loop.create_future()
            self._running.add_done_callback(lambda _: loop.call_soon(done.set_result, None))
            await done

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def computing(self) -> bool:
        """Whether a batch is in the worker thread now."""
        return self._running is not None

    def submit(self, item: Item) -> asyncio.Future:
        """Queue ``item``; the future gets its answer (or the exception ``finish`` gave)."""
        if self._loop is None:
            raise Unavailable(f"{self.name!r} is not running", "shutdown")
        if len(self._queue) >= self.max_queue:
            raise ResourceExhausted(f"queue {self.name!r} is full ({self.max_queue} waiting); "
                                    "retry later", "queue_full")
        fut = self._loop.create_future()
        self._queue.append((item, fut, time.perf_counter()))
        self._kick()
        return fut

    async def run(self, item: Item) -> Any:
        return await self.submit(item)

    def _kick(self) -> None:
        if self._running is not None or self._timer is not None or not self._queue:
            return
        loaded = self._last_size > 1 or not self.adaptive
        if self.window_s > 0 and loaded and len(self._queue) < self.max_batch:
            self._timer = self._loop.call_later(self.window_s, self._launch)
        else:  # at the end of this loop iteration: what else it submits joins the batch
            self._timer = self._loop.call_soon(self._launch)

    def _launch(self) -> None:
        self._timer = None
        items, queued = [], math.inf
        while self._queue and len(items) < self.max_batch:
            item, fut, at = self._queue.popleft()
            if not fut.done():  # skip callers that gave up (deadline, disconnect)
                items.append((item, fut))
                queued = min(queued, at)
        if not items:
            return
        try:
            work = self._prepare([item for item, _ in items])
        except Exception as e:  # a bug: fail this batch, not the server
            self._fail(items, e)
            self._kick()
            return
        start = time.perf_counter()
        if self._inline(len(items)):
            try:
                out = self._compute(work)
            except Exception as e:
                self._fail(items, e)
                self._kick()
                return
            seconds = time.perf_counter() - start
            self.inline_batches += 1
            self._inline_busy += seconds
            self._answer(items, work, out, BatchTimes(len(items), start - queued, seconds, 0.0))
            return
        self._running = self._loop.run_in_executor(self._executor, self._timed, work)
        self._running.add_done_callback(partial(self._done, items, work, queued))

    def _inline(self, n: int) -> bool:
        if n > 1 or self._last_size > 1:  # several sessions at once: batches pay off
            return False
        if self._single is None or self._single > self.inline_s:
            return False
        now = time.perf_counter()
        self._inline_busy *= math.exp((self._inline_at - now) / INLINE_TAU_S)
        self._inline_at = now
        return (self._inline_busy + self._single) / INLINE_TAU_S <= self.inline_share

    def _timed(self, work: Work) -> tuple[Out, float, float]:
        """``compute``, and when it started and ended, taken in the worker."""
        start = time.perf_counter()
        out = self._compute(work)
        return out, start, time.perf_counter()

    def _done(self, items, work, queued: float, running: asyncio.Future) -> None:
        self._running = None
        try:
            out, start, end = running.result()
        except Exception as e:
            self._fail(items, e)
            if self._loop is not None:
                self._kick()
            return
        self._answer(items, work, out, BatchTimes(len(items), start - queued, end - start,
                                                  time.perf_counter() - end))

    def _answer(self, items, work, out, times: BatchTimes) -> None:
        if len(items) == 1:
            self._single = times.compute if self._single is None else \
                0.9 * self._single + 0.1 * times.compute
        try:
            answers = self._finish(work, out)
        except Exception as e:
            self._fail(items, e)
        else:
            for (_, fut), answer in zip(items, answers, strict=True):
                if fut.done():
                    continue  # the caller gave up (deadline, disconnect)
                if isinstance(answer, BaseException):
                    fut.set_exception(answer)
                else:
                    fut.set_result(answer)
        self.batches += 1
        self.items += len(items)
        self._last_size = len(items)
        if self._observe is not None:
            self._observe(times)
        if self._loop is not None:
            self._kick()

    def _fail(self, items, e: Exception) -> None:
        error = e if isinstance(e, ServiceError) else Unavailable(
            f"{self.name!r} failed: {type(e).__name__}: {e}", self.failure_reason)
        for _, fut in items:
            if not fut.done():
                fut.set_exception(error)


EncodeFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _stack(items: list[np.ndarray]) -> np.ndarray:
    return np.stack(items)


def _split(_: np.ndarray, out: tuple[np.ndarray, np.ndarray]
           ) -> list[tuple[np.ndarray, np.ndarray]]:
    w, var = out
    return [(w[i:i + 1], var[i:i + 1]) for i in range(w.shape[0])]


class EncodeBatcher(Batcher[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]):
    """One encoder's runs: observations of every session stacked, one run per batch; each
    caller gets its ``([1, L], [1, L])``."""

    def __init__(self, name: str, encode: EncodeFn, executor: Executor, max_batch: int = 64,
                 window_s: float = 0.0, max_queue: int = 1024,
                 observe: Callable[[BatchTimes], None] | None = None, adaptive: bool = False,
                 inline_s: float = 0.0, inline_share: float = 0.5):
        super().__init__(name, executor, _stack, encode, _split, max_batch, window_s,
                         max_queue, observe, adaptive, inline_s, inline_share)
        self.failure_reason = "encoder_failed"

    async def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encoder outputs ``([1, L], [1, L])`` for one observation ``x``."""
        return await self.submit(x)
