"""Sessions: one robot stream each, with its timeline and filter. Pure logic, synchronous,
no transport: the gRPC and HTTP layers call ``server.service.EstimatorService``, which calls
this. Every refusal raises a ``server.errors`` type before anything changes.

Queries come in two forms: ``belief`` / ``policy_action`` compute at once, one session at a
time (``server.engine.run_inline``); the service instead checks with ``locate_query``,
runs the ``server.engine`` job batched across sessions off the event loop, and answers
with ``belief_view`` / ``record_policy``. The arithmetic is the same.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from proto import wire
from proto.wire import Ack, ActionView, Belief, BeliefDetail, SessionInfo
from server import engine
from server.errors import (
    Aborted,
    AlreadyExists,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    shown,
)
from server.models import Model
from server.runtime.manifest import SensorInfo
from server.timeline import ActionEntry, Layout, Observation, Timeline, time_problem


@dataclass(frozen=True)
class Limits:
    max_sessions: int = 256
    history_window_s: float = 1.0  # default per session
    max_history_window_s: float = 10.0
    max_gap_s: float = 10.0  # how far beyond the newest tick a timestamp may jump
    idle_timeout_s: float = 300.0
    max_pending_per_session: int = 32  # messages of one session waiting for an encoder


@dataclass
class Session:
    id: str
    model: Model
    window_s: float
    timeline: Timeline
    created: float  # wall-clock seconds (for people)
    last_active: float  # registry clock (monotonic)
    seq_next: int = 0  # arrival numbers (ties between equal timestamps: later wins)
    pending: int = 0  # messages waiting for an encoder
    observing: bool = False  # a message is in a filter batch (encoded and recorded there)
    accepted: Counter = field(default_factory=Counter)  # sensor -> messages accepted
    refused: Counter = field(default_factory=Counter)  # reason -> messages refused
    superseded: int = 0  # accepted but replaced by a later message of the same tick
    actions: int = 0
    generation: int = 0  # time axes so far (+1 per reset): a message encoded across a reset
    # belongs to the old axis and is refused

    def next_seq(self) -> int:
        self.seq_next += 1
        return self.seq_next - 1


# -- issue 14: client-chosen ids and the shared store (server/store.py) -------------------
SESSION_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_session_id(session_id: str) -> None:
    """An id a client chose (so the balancer can route the create): 1-64 characters of
    letters, digits, ``_ . -``."""
    if SESSION_ID.fullmatch(session_id) is None:
        raise InvalidArgument(f"session id {shown(session_id)}: 1 to 64 letters, digits, "
                              "'_', '.' or '-'", "bad_session_id")


class SharedSessions(Protocol):
    """Sessions shared by a fleet of replicas (``server.store.SessionStore``)."""

    def lookup(self, session_id: str, session: Session | None) -> Session | None: ...
    def claim(self, session: Session) -> None: ...
    def release(self, session_id: str) -> None: ...
# -- end of issue 14 -----------------------------------------------------------------------


def _check_start_time(start_time: float | None) -> None:
    problem = None if start_time is None else time_problem(start_time)
    if problem is not None:
        raise InvalidArgument(f"start_time {problem}", "bad_start_time")


class SessionRegistry:
    def __init__(self, models: dict[str, Model], limits: Limits | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if not models:
            raise ValueError("no models loaded")
        self.models = models
        self.default_model = next(iter(models))
        self.limits = limits or Limits()
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        self.shared: SharedSessions | None = None  # issue 14: a fleet's shared store
        # Called when a timeline's records leaving the window have no belief yet (nobody
        # queried): by default computed here; the service queues a batched settle instead.
        self.on_backlog: Callable[[Session], None] = self.settle

    # -- lifecycle ------------------------------------------------------------------------
    def _timeline(self, model: Model, window_s: float, start_time: float | None) -> Timeline:
        period = model.manifest.control_period
        return Timeline(Layout.of(model.manifest), period,
                        window_ticks=max(1, math.ceil(window_s / period - 1e-9)),
                        max_gap_ticks=max(1, math.ceil(self.limits.max_gap_s / period - 1e-9)),
                        t0=start_time)

    def create(self, model: str | None = None, start_time: float | None = None,
               history_window_s: float | None = None, session_id: str | None = None) -> Session:
        name = model or self.default_model
        if name not in self.models:
            raise NotFound(f"unknown model {shown(name)}; loaded: {sorted(self.models)}",
                           "unknown_model")
        _check_start_time(start_time)
        window = self.limits.history_window_s if history_window_s is None else history_window_s
        if not (math.isfinite(window) and 0 < window <= self.limits.max_history_window_s):
            raise InvalidArgument(f"history_window_s {window} must be in (0, "
                                  f"{self.limits.max_history_window_s}]")
        if len(self.sessions) >= self.limits.max_sessions:
            raise ResourceExhausted(f"the server holds its limit of {self.limits.max_sessions} "
                                    "sessions; close one or retry later", "max_sessions")
        if session_id is not None:  # issue 14: chosen by the client (routing)
            check_session_id(session_id)
            if session_id in self.sessions:
                raise AlreadyExists(f"session id {shown(session_id)} is taken", "id_taken")
        sid = session_id or secrets.token_hex(8)
        m = self.models[name]
        session = Session(sid, m, float(window), self._timeline(m, window, start_time),
                          created=time.time(), last_active=self.clock())
        if self.shared is not None:  # issue 14: the id must be free in the whole fleet
            self.shared.claim(session)
        self.sessions[sid] = session
        return session

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if self.shared is not None:  # issue 14: held here under a lease, or taken over
            session = self.shared.lookup(session_id, session)
        if session is None:
            raise NotFound(f"unknown session {shown(session_id)} (closed, expired or never "
                           "created)", "unknown_session")
        session.last_active = self.clock()
        return session

    def close(self, session_id: str) -> None:
        self.get(session_id)
        if self.shared is not None:  # issue 14: gone from the fleet's store too
            self.shared.release(session_id)
        del self.sessions[session_id]

    def reset(self, session_id: str, start_time: float | None = None) -> Session:
        """Back to the initial belief: every record, action and replay state is dropped;
        the time axis starts again at ``start_time`` (or at the next message)."""
        session = self.get(session_id)
        try:
            _check_start_time(start_time)
        except InvalidArgument as e:
            session.refused[e.reason] += 1
            raise
        session.timeline = self._timeline(session.model, session.window_s, start_time)
        session.generation += 1
        return session

    def expire_idle(self) -> list[str]:
        now = self.clock()
        gone = [sid for sid, s in self.sessions.items()
                if now - s.last_active > self.limits.idle_timeout_s]
        for sid in gone:
            del self.sessions[sid]
        return gone

    def describe(self, session_id: str) -> SessionInfo:
        s = self.get(session_id)
        tl = s.timeline
        return SessionInfo(
            session_id=s.id, model=s.model.name, control_period_s=tl.period,
            history_window_s=s.window_s, start_time=tl.t0, newest_tick=tl.head,
            newest_time=tl.tick_start(tl.head) if tl.head >= 0 else None,
            accepted=dict(s.accepted), refused=dict(s.refused), superseded=s.superseded,
            actions=s.actions, replayed_ticks=tl.replayed_ticks,
            idle_s=self.clock() - s.last_active, created=s.created)

    def settle(self, session: Session) -> None:
        """Compute the beliefs of the ticks leaving the window (so their records can go)."""
        engine.run_inline(session.model.engine, [engine.SettleJob(session.timeline)])

    def _recorded(self, session: Session) -> None:
        if session.timeline.backlog >= session.timeline.window_ticks:
            self.on_backlog(session)

    # -- messages -------------------------------------------------------------------------
    def prepare_observation(self, session_id: str, sensor: str, timestamp: float
                            ) -> tuple[Session, SensorInfo]:
        """Check session, sensor and time before the payload is decoded (cheap refusals
        first). Changes nothing; the time is checked again when the message is recorded."""
        session = self.get(session_id)
        info = session.model.sensor(sensor)
        try:
            if info is None:
                raise NotFound(f"unknown sensor {shown(sensor)}; model {session.model.name!r} has "
                               f"{list(session.model.engine.sensor_order)}", "unknown_sensor")
            session.timeline.locate(timestamp)
        except Exception as e:
            session.refused[getattr(e, "reason", "error")] += 1
            raise
        return session, info

    def record_observation(self, session: Session, sensor: str, timestamp: float, seq: int,
                           w: np.ndarray, var: np.ndarray, generation: int | None = None
                           ) -> Ack:
        """Record an encoded message. ``generation``: the session's generation when the
        message was checked (``prepare_observation``); a reset since then refuses it."""
        if self.sessions.get(session.id) is not session:
            raise NotFound(f"session {shown(session.id)} was closed while its message was "
                           "being encoded", "unknown_session")
        try:
            if generation is not None and generation != session.generation:
                raise Aborted(f"session {shown(session.id)} was reset while this {sensor!r} "
                              "message was being encoded: it belongs to the old time axis and "
                              "was not recorded", "reset_during_encode")
            tick, applied = session.timeline.insert_observation(
                sensor, Observation(float(timestamp), seq, w, var))
        except Exception as e:
            session.refused[getattr(e, "reason", "error")] += 1
            raise
        session.accepted[sensor] += 1
        session.superseded += not applied
        self._recorded(session)
        return Ack(session_id=session.id, sensor=sensor, timestamp=float(timestamp), tick=tick,
                   applied=applied, newest_tick=session.timeline.head)

    # -- actions --------------------------------------------------------------------------
    def _action_values(self, session: Session, values) -> np.ndarray:
        m = session.model.manifest
        try:
            a = np.asarray(values, dtype=np.float64)
        except OverflowError:
            raise InvalidArgument("action: a value is too large for a 64-bit float",
                                  "not_finite") from None
        except (TypeError, ValueError):
            raise InvalidArgument("action: values must be numbers", "bad_action") from None
        if a.shape != (m.action_size,):
            raise InvalidArgument(f"action: {a.size} values, the model's action size is "
                                  f"{m.action_size}", "bad_shape")
        if not bool(np.isfinite(a).all()):
            raise InvalidArgument("action: NaN or infinite values", "not_finite")
        tol = 1e-6 * (m.action_high - m.action_low)
        if bool(np.any(a < m.action_low - tol) or np.any(a > m.action_high + tol)):
            raise InvalidArgument(f"action: {a.tolist()} is outside the bounds "
                                  f"[{m.action_low.tolist()}, {m.action_high.tolist()}]",
                                  "bad_action")
        return np.clip(a, m.action_low, m.action_high).astype(np.float32)

    def report_action(self, session_id: str, timestamp: float, values) -> ActionView:
        """The controller applied ``values`` (the bundle's units) over the tick of
        ``timestamp``; it replaces a policy action recorded for that tick. The timeline
        keeps it in the unit range the transition network was trained on."""
        session = self.get(session_id)
        try:
            a = self._action_values(session, values)
            unit = np.clip(session.model.engine.to_unit(a), -1.0, 1.0).astype(np.float32)
            entry = ActionEntry(float(timestamp), session.next_seq(), unit, "reported")
            tick, recorded = session.timeline.record_action(entry)
        except Exception as e:
            session.refused[getattr(e, "reason", "error")] += 1
            raise
        session.actions += 1
        self._recorded(session)
        return ActionView(session.id, float(timestamp), tick, a, "reported", recorded)

    # -- queries --------------------------------------------------------------------------
    def locate_query(self, session_id: str, timestamp: float | None) -> tuple[Session, int]:
        """The session and the tick a query at ``timestamp`` asks about (None: the newest
        tick; before anything was recorded, tick 0). Changes nothing but the counters."""
        session = self.get(session_id)
        tl = session.timeline
        if timestamp is None:
            return session, max(tl.head, 0)
        try:
            return session, tl.locate(timestamp)
        except OutOfRange as e:
            session.refused[e.reason] += 1
            raise

    def record_policy(self, session: Session, timestamp: float, policy: engine.Policy
                      ) -> ActionView:
        """Record the policy's action (``policy.unit``, computed on the belief at the tick of
        ``timestamp``) as applied over its tick unless the controller reported one; the
        answer is in the bundle's units."""
        m = session.model
        a = np.clip(m.engine.from_unit(policy.unit), m.manifest.action_low,
                    m.manifest.action_high)
        if self.sessions.get(session.id) is not session:
            raise NotFound(f"session {shown(session.id)} was closed while its action was "
                           "computed", "unknown_session")
        tick, recorded = session.timeline.record_action(
            ActionEntry(float(timestamp), session.next_seq(), policy.unit, "policy"))
        session.actions += recorded
        self._recorded(session)
        return ActionView(session.id, float(timestamp), tick, a, "policy", recorded)

    @staticmethod
    def belief_view(session: Session, timestamp: float | None, est: engine.Estimate
                    ) -> Belief:
        state = None if est.state is None else wire.StateEstimate(
            tuple(session.model.state_names), est.state.mean, est.state.var)
        return Belief(session_id=session.id, timestamp=timestamp, tick=est.tick,
                      newest_tick=est.head, predicted=est.predicted,
                      mean=est.belief.mean[0], var=est.belief.var[0],
                      decoded={k: e.mean for k, e in est.decoded.items()},
                      decoded_var={k: e.var for k, e in est.decoded.items()},
                      reward=est.reward, state=state, detail=est.detail)

    def policy_action(self, session_id: str, timestamp: float) -> ActionView:
        """The policy's action on the belief at ``timestamp`` (the actor's mode on the belief
        mean, in the bundle's units), recorded (in the unit range) as applied over its tick
        unless the controller reported one for that tick."""
        session, tick = self.locate_query(session_id, timestamp)
        (policy,) = engine.run_inline(session.model.engine,
                                      [engine.ActJob(session.timeline, tick)])
        return self.record_policy(session, timestamp, policy)

    def belief(self, session_id: str, timestamp: float | None = None,
               detail: BeliefDetail = BeliefDetail.FULL) -> Belief:
        """The belief at ``timestamp`` (its tick), or at the newest tick; predicted forward
        from the newest tick when later, with what ``detail`` asks for. Changes nothing but
        the lazy replay."""
        session, tick = self.locate_query(session_id, timestamp)
        (est,) = engine.run_inline(session.model.engine,
                                   [engine.BeliefJob(session.timeline, tick, detail)])
        return self.belief_view(session, timestamp, est)
