"""Prometheus metrics of one server (its own registry: no global state)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from server.batcher import BatchTimes

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, active_sessions: Callable[[], int] = lambda: 0):
        self.registry = r = CollectorRegistry()
        self.messages = Counter("vrkn_messages", "Sensor messages accepted",
                                ["sensor", "transport"], registry=r)
        self.refused = Counter("vrkn_refused", "Requests refused, by reason", ["reason"],
                               registry=r)
        self.latency = Histogram("vrkn_request_seconds", "Request handling time in the server",
                                 ["op", "transport"], buckets=LATENCY_BUCKETS, registry=r)
        self.sessions = Gauge("vrkn_active_sessions", "Sessions open", registry=r)
        self.sessions.set_function(active_sessions)
        self.expired = Counter("vrkn_sessions_expired", "Sessions closed for idleness",
                               registry=r)
        self.restore_failures = Counter("vrkn_restore_failures", "Saved sessions not "
                                        "restored at start (unreadable: the whole file)",
                                        ["reason"], registry=r)
        self.snapshot_failures = Counter("vrkn_snapshot_failures", "Snapshots not written",
                                         registry=r)
        self.batch_size = Histogram("vrkn_encoder_batch_size", "Messages per encoder run",
                                    ["encoder"], buckets=BATCH_BUCKETS, registry=r)
        self.encode_seconds = Histogram("vrkn_encoder_seconds", "Encoder run time",
                                        ["encoder"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_wait = Histogram("vrkn_batch_wait_seconds", "A batch's oldest item: "
                                    "queued until its compute starts (the batch before it, "
                                    "the worker thread's wake-up)", ["encoder"],
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.batch_return = Histogram("vrkn_batch_return_seconds", "A batch's compute done "
                                      "until the event loop takes its answers (0 when it "
                                      "ran on the loop)", ["encoder"],
                                      buckets=LATENCY_BUCKETS, registry=r)

    @contextmanager
    def timed(self, op: str, transport: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.latency.labels(op, transport).observe(time.perf_counter() - start)

    def batch_observer(self, encoder: str) -> Callable[[BatchTimes], None]:
        """Records each batch of one batcher (an encoder, or a model's filter batch)."""
        size, seconds = self.batch_size.labels(encoder), self.encode_seconds.labels(encoder)
        wait, back = self.batch_wait.labels(encoder), self.batch_return.labels(encoder)

        def observe(t: BatchTimes) -> None:
            size.observe(t.size)
            seconds.observe(t.compute)
            wait.observe(t.waited)
            back.observe(t.returned)

        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)
