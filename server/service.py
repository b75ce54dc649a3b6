"""The operations both transports offer, on the session registry: payload decoding,
encoding and the filter work (batched across sessions, in worker threads: the event loop
does I/O and bookkeeping, and a lone robot's cheap batch: ``server.batcher``),
back-pressure limits, metrics, idle expiry and the snapshot on shutdown / restore on
start. Transport-neutral and async (one event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from proto.wire import BeliefDetail
from server import engine, snapshot
from server.batcher import Batcher, EncodeBatcher
from server.errors import InvalidArgument, ResourceExhausted, ServiceError
from server.metrics import Metrics
from server.models import Model
from server.payloads import Payload, PayloadLimits, decode_payload
from server.session import (
    Ack,
    ActionView,
    Belief,
    Limits,
    Session,
    SessionInfo,
    SessionRegistry,
)
from server.settings import Settings
from server.store import SessionStore, StoreConfig  # issue 14: a fleet's shared store
from server.timeline import Pending

log = logging.getLogger("server")


@dataclass(frozen=True)
class SensorMessageIn:
    session_id: str
    sensor: str
    timestamp: float
    payload: Payload
    return_belief: bool = False
    belief_detail: BeliefDetail = BeliefDetail.FULL  # what that belief carries


class EstimatorService:
    def __init__(self, models: dict[str, Model], settings: Settings,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = s = settings
        self.registry = SessionRegistry(models, Limits(
            max_sessions=s.max_sessions, history_window_s=s.history_window_s,
            max_history_window_s=s.max_history_window_s, max_gap_s=s.max_gap_s,
            idle_timeout_s=s.idle_timeout_s, max_pending_per_session=s.max_pending_per_session),
            clock=clock)
        self.metrics = Metrics(lambda: len(self.registry.sessions))
        self.payload_limits = PayloadLimits(s.max_message_bytes, s.max_image_pixels)
        self.batchers: dict[tuple[str, str], EncodeBatcher] = {}  # (model, sensor)
        self.engines: dict[str, Batcher] = {}  # model -> its batched filter work
        self._settling: set[int] = set()  # ids of timelines with a settle job queued
        self.registry.on_backlog = self._settle
        self.ready = False
        self.restore_report: snapshot.RestoreReport | None = None
        # Snapshots: numbered when captured (on the event loop), written one at a time in a
        # thread; an older one never replaces a newer one. None: writing is allowed.
        self._snapshot_numbers = itertools.count(1)
        self._snapshot_lock = threading.Lock()
        self._snapshot_written = 0
        self.snapshot_blocked: str | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._expiry: asyncio.Task | None = None
        self._periodic: asyncio.Task | None = None
        self.store: SessionStore | None = None  # issue 14: set in start() with settings.store

    @property
    def models(self) -> dict[str, Model]:
        return self.registry.models

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self._executor = ThreadPoolExecutor(s.workers, thread_name_prefix="engine")
        for model in self.models.values():
            for info in model.manifest.sensors:
                name = f"{model.name}/{info.name}"
                image = info.kind == "image"
                b = EncodeBatcher(
                    name, partial(model.encode, info.name), self._executor,
                    max_batch=s.batch_max if image else s.engine_batch_max,
                    window_s=(s.batch_window_ms if image else s.engine_window_ms) / 1000,
                    max_queue=s.max_queue, observe=self.metrics.batch_observer(name),
                    adaptive=s.batch_window_adaptive, inline_s=s.inline_ms / 1000,
                    inline_share=s.inline_share)
                b.start()
                self.batchers[model.name, info.name] = b
            name = f"{model.name}/filter"
            f = Batcher(name, self._executor, engine.prepare, partial(engine.compute,
                        model.engine), engine.finish, max_batch=s.engine_batch_max,
                        window_s=s.engine_window_ms / 1000, max_queue=s.max_queue,
                        observe=self.metrics.batch_observer(name),
                        adaptive=s.batch_window_adaptive, inline_s=s.inline_ms / 1000,
                        inline_share=s.inline_share)
            f.start()
            self.engines[model.name] = f
        if s.snapshot_path is not None and Path(s.snapshot_path).is_file():
            self.restore(Path(s.snapshot_path))
        if s.store is not None:  # issue 14: StoreError when Redis is not usable
            self.store = SessionStore.connect(StoreConfig.from_settings(s), self.registry,
                                              self.metrics.registry)
            self.store.start()
        loop = asyncio.get_running_loop()
        self._expiry = loop.create_task(self._expire_loop())
        if s.snapshot_path is not None and s.snapshot_interval_s > 0:
            self._periodic = loop.create_task(self._snapshot_loop())
        self.ready = True

    async def stop(self) -> None:
        """Stop taking work, save the sessions (when a snapshot path is set)."""
        self.ready = False
        for task in (self._expiry, self._periodic):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for b in [*self.batchers.values(), *self.engines.values()]:
            await b.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self.store is not None:  # issue 14: last write, leases released
            await self.store.stop()
        if self.settings.snapshot_path is not None:
            n = await self.save_snapshot()
            if n is not None:
                log.info("saved %d sessions to %s", n, self.settings.snapshot_path)

    def restore(self, path: Path) -> snapshot.RestoreReport:
        """Restore the sessions of ``path`` (left in place: only a newer snapshot replaces
        it). Whatever is not restored is logged, counted in ``vrkn_restore_failures_total``
        and shown on /readyz, and the file is copied aside first so nothing is lost."""
        report = snapshot.restore(self.registry, path)
        self.restore_report = report
        for reason, message in report.failures:
            log.error("not restored (%s): %s", reason, message)
            self.metrics.restore_failures.labels(reason).inc()
        if not report.ok:
            try:
                report.kept_copy = str(snapshot.keep_copy(path))
                log.error("%d sessions restored, %d not; the snapshot is kept as %s",
                          report.restored, len(report.failures), report.kept_copy)
            except OSError as e:  # then never overwrite the only copy
                self.snapshot_blocked = f"cannot keep a copy of {path} ({e})"
                log.error("%s: no snapshot will be written", self.snapshot_blocked)
        log.info("restored %d sessions from %s", report.restored, path)
        return report

    async def save_snapshot(self) -> int | None:
        """Capture every session (here, on the event loop: consistent; a cheap copy of the
        records), then encode and write them in a thread; returns how many, or None when
        not written (blocked, failed or superseded by a newer snapshot)."""
        path = Path(self.settings.snapshot_path)
        state, number = snapshot.take(self.registry), next(self._snapshot_numbers)
        try:
            written = await asyncio.to_thread(
                lambda: self._write_snapshot(snapshot.to_json(state), number, path))
        except OSError as e:
            self.metrics.snapshot_failures.inc()
            log.error("snapshot to %s failed: %s", path, e)
            return None
        return len(state.sessions) if written else None

    def _write_snapshot(self, state: dict, number: int, path: Path) -> bool:
        with self._snapshot_lock:
            if self.snapshot_blocked is not None:
                self.metrics.snapshot_failures.inc()
                log.error("snapshot not written: %s", self.snapshot_blocked)
                return False
            if number <= self._snapshot_written:
                return False  # a newer one was written meanwhile
            snapshot.write(state, path)
            self._snapshot_written = number
            return True

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.expiry_interval_s)
            gone = self.registry.expire_idle()
            if gone:
                self.metrics.expired.inc(len(gone))
                log.info("expired %d idle sessions", len(gone))

    async def _snapshot_loop(self) -> None:
        """Save the sessions every ``snapshot_interval_s``."""
        while True:
            await asyncio.sleep(self.settings.snapshot_interval_s)
            await self.save_snapshot()

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        """Count refusals in the ``refused`` metric."""
        try:
            yield
        except ServiceError as e:
            self.metrics.refused.labels(e.reason).inc()
            raise

    # -- operations -----------------------------------------------------------------------
    def is_batched(self, session_id: str, sensor: str) -> bool:
        """Whether this session's messages of ``sensor`` take long enough in their encoder
        (images) that a transport should process them concurrently; others keep their
        order. False for unknown ids."""
        session = self.registry.sessions.get(session_id)
        info = None if session is None else session.model.sensor(sensor)
        return info is not None and info.kind == "image"

    def _settle(self, session: Session) -> None:
        """Queue a settle job for a timeline nobody queries (the registry's ``on_backlog``):
        its records leaving the window are computed in the next batch, then dropped."""
        tl = session.timeline
        if id(tl) in self._settling:
            return
        try:
            fut = self.engines[session.model.name].submit(engine.SettleJob(tl))
        except ServiceError:  # full or stopping: the records stay until the next query
            return
        self._settling.add(id(tl))
        fut.add_done_callback(lambda f: (self._settling.discard(id(tl)),
                                         f.cancelled() or f.exception()))

    async def _run(self, session: Session, job: engine.Job) -> engine.Answer:
        return await self.engines[session.model.name].run(job)

    def create_session(self, model: str | None = None, start_time: float | None = None,
                       history_window_s: float | None = None,
                       session_id: str | None = None) -> SessionInfo:
        """``session_id``: chosen by the client (the balancer routed the call on it)."""
        with self.counting():
            s = self.registry.create(model, start_time, history_window_s, session_id)
            return self.registry.describe(s.id)

    def describe_session(self, session_id: str) -> SessionInfo:
        with self.counting():
            return self.registry.describe(session_id)

    def reset_session(self, session_id: str, start_time: float | None = None) -> SessionInfo:
        with self.counting():
            self.registry.reset(session_id, start_time)
            return self.registry.describe(session_id)

    def close_session(self, session_id: str) -> None:
        with self.counting():
            self.registry.close(session_id)

    async def send_message(self, msg: SensorMessageIn, transport: str
                           ) -> tuple[Ack, Belief | None]:
        """Record a sensor message; with ``return_belief``, answer the belief at its tick.
        A vector message that wants its belief is encoded, recorded and answered in one
        filter batch (one trip to a worker thread, none when it runs inline; ``_observe``);
        other messages are encoded in their sensor's encoder batch, recorded here, then
        queried. Refusals count in the session's ``refused`` where they are raised."""
        with self.counting():
            session, info = self.registry.prepare_observation(msg.session_id, msg.sensor,
                                                              msg.timestamp)
            generation = session.generation  # a reset while encoding refuses the message
            if session.pending >= self.registry.limits.max_pending_per_session:
                session.refused["session_queue_full"] += 1
                raise ResourceExhausted(
                    f"session {session.id!r} has {session.pending} messages waiting for the "
                    "encoder (the per-session limit); retry later", "session_queue_full")
            session.pending += 1
            try:  # (plain try/except, not a context manager: this is every message's path)
                try:
                    if msg.payload.kind == "encoded":  # PNG / JPEG: decoded in a worker
                        x = await asyncio.get_running_loop().run_in_executor(
                            self._executor, decode_payload, info, msg.payload,
                            self.payload_limits)
                    else:
                        x = decode_payload(info, msg.payload, self.payload_limits)
                except ServiceError as e:
                    session.refused[e.reason] += 1
                    raise
                seq = session.next_seq()
                # one such message per session at a time: it plans on the records
                if msg.return_belief and info.kind == "vector" and not session.observing:
                    return await self._observe(session, info.name, msg, x, seq, generation,
                                               transport)
                try:
                    w, var = await self.batchers[session.model.name, info.name].encode(x)
                    _check_encoded(info.name, w, var)
                except ServiceError as e:
                    session.refused[e.reason] += 1
                    raise
            finally:
                session.pending -= 1
            ack = self.registry.record_observation(session, info.name, msg.timestamp, seq, w,
                                                   var, generation)
            self.metrics.messages.labels(info.name, transport).inc()
            belief = await self._belief(msg.session_id, msg.timestamp, msg.belief_detail) \
                if msg.return_belief else None
            return ack, belief

    async def _observe(self, session: Session, sensor: str, msg: SensorMessageIn,
                       x: np.ndarray, seq: int, generation: int, transport: str
                       ) -> tuple[Ack, Belief]:
        """The message's encoder, its recording and its belief in one filter batch
        (``engine.ObserveJob``; ``record`` runs here, on the loop, when the batch is done).
        The job runs to its end even if the caller goes away (the message is then recorded
        as if answered), and the session takes its next such message only after it."""
        counted: list[Exception] = []  # refusals record_observation counted itself

        def record(w: np.ndarray, var: np.ndarray) -> Ack:
            _check_encoded(sensor, w, var)
            try:
                ack = self.registry.record_observation(session, sensor, msg.timestamp, seq,
                                                       w, var, generation)
            except Exception as e:
                counted.append(e)
                raise
            self.metrics.messages.labels(sensor, transport).inc()
            return ack

        try:
            pending = Pending(sensor, session.timeline.locate(msg.timestamp), msg.timestamp,
                              seq)
            fut = self.engines[session.model.name].submit(engine.ObserveJob(
                session.timeline, pending, x[None], record, msg.belief_detail))
        except ServiceError as e:
            session.refused[e.reason] += 1
            raise
        session.observing = True

        def done(f: asyncio.Future) -> None:
            session.observing = False
            if not f.cancelled():
                f.exception()  # retrieved: a caller that went away is no error to log

        fut.add_done_callback(done)
        try:
            observed = await asyncio.shield(fut)
        except ServiceError as e:  # not finite, no longer in the window, batch failed, ...
            if not any(e is c for c in counted):
                session.refused[e.reason] += 1
            raise
        return observed.ack, self.registry.belief_view(session, msg.timestamp,
                                                       observed.estimate)

    def report_action(self, session_id: str, timestamp: float, values) -> ActionView:
        with self.counting():
            return self.registry.report_action(session_id, timestamp, values)

    async def policy_action(self, session_id: str, timestamp: float) -> ActionView:
        """The policy's action, computed in the model's filter batch (a worker thread, or the
        loop for a lone cheap batch: ``server.batcher``)."""
        with self.counting():
            session, tick = self.registry.locate_query(session_id, timestamp)
            policy = await self._run(session, engine.ActJob(session.timeline, tick))
            return self.registry.record_policy(session, timestamp, policy)

    async def belief(self, session_id: str, timestamp: float | None = None,
                     detail: BeliefDetail = BeliefDetail.FULL) -> Belief:
        """The belief (with what ``detail`` asks for), computed in the model's filter batch
        (a worker thread, or the loop for a lone cheap batch: ``server.batcher``)."""
        with self.counting():
            return await self._belief(session_id, timestamp, detail)

    async def _belief(self, session_id: str, timestamp: float | None,
                      detail: BeliefDetail) -> Belief:
        session, tick = self.registry.locate_query(session_id, timestamp)
        est = await self._run(session, engine.BeliefJob(session.timeline, tick, detail))
        return self.registry.belief_view(session, timestamp, est)


def _check_encoded(sensor: str, w: np.ndarray, var: np.ndarray) -> None:
    if not (np.isfinite(w).all() and np.isfinite(var).all()):
        raise InvalidArgument(f"sensor {sensor!r}: the encoder's output is not finite "
                              "(values far outside the training range?)", "not_finite")
