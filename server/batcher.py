"""Dynamic batching of encoder runs across sessions (as inference servers do).

Messages of every session for one (model, sensor) queue here; a worker takes what is
queued (up to ``max_batch``), optionally waiting ``window_s`` for more to arrive, and runs
the encoder once on the stack in a worker thread (ONNX Runtime releases the GIL, so the
event loop keeps receiving, and the next batch forms while this one runs). With
``window_s = 0`` a lone message runs at once: batches form only under load.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from server.errors import ResourceExhausted, Unavailable

EncodeFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class EncodeBatcher:
    def __init__(self, name: str, encode: EncodeFn, executor: Executor, max_batch: int = 64,
                 window_s: float = 0.0, max_queue: int = 1024,
                 observe: Callable[[int, float], None] | None = None):
        self.name, self._encode, self._executor = name, encode, executor
        self.max_batch, self.window_s, self.max_queue = max_batch, window_s, max_queue
        self._observe = observe  # (batch size, seconds) after each run, for metrics
        self._queue: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue:
            _, fut = self._queue.popleft()
            if not fut.done():
                fut.set_exception(Unavailable("the server is shutting down", "shutdown"))

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encoder outputs ``([1, L], [1, L])`` for one observation ``x``."""
        if self._task is None:
            raise Unavailable("the encoder is not running", "shutdown")
        if len(self._queue) >= self.max_queue:
            raise ResourceExhausted(f"encoder queue {self.name!r} is full ({self.max_queue} "
                                    "messages waiting); retry later", "queue_full")
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((x, fut))
        self._wake.set()
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                if self.window_s > 0 and len(self._queue) < self.max_batch:
                    await asyncio.sleep(self.window_s)
                items = []
                while self._queue and len(items) < self.max_batch:
                    x, fut = self._queue.popleft()
                    if not fut.done():  # skip callers that gave up (deadline, disconnect)
                        items.append((x, fut))
                if not items:
                    continue
                batch = np.stack([x for x, _ in items])
                start = time.perf_counter()
                try:
                    w, var = await loop.run_in_executor(self._executor, self._encode, batch)
                except Exception as e:  # an encoder failure fails this batch, not the server
                    for _, fut in items:
                        if not fut.done():
                            fut.set_exception(Unavailable(f"encoder {self.name!r} failed: {e}",
                                                          "encoder_failed"))
                    continue
                self.batches += 1
                self.items += len(items)
                if self._observe is not None:
                    self._observe(len(items), time.perf_counter() - start)
                for i, (_, fut) in enumerate(items):
                    if not fut.done():
                        fut.set_result((w[i:i + 1], var[i:i + 1]))
