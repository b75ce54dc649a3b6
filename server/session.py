"""Sessions: one robot stream each, with its timeline and filter. Pure logic, synchronous,
no transport: the gRPC and HTTP layers call ``server.service.EstimatorService``, which calls
this. Every refusal raises a ``server.errors`` type before anything changes.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from server.errors import Aborted, InvalidArgument, NotFound, OutOfRange, ResourceExhausted, shown
from server.models import Model
from server.runtime.manifest import SensorInfo
from server.runtime.uncertainty import StateEstimate
from server.timeline import ActionEntry, Observation, Timeline, time_problem


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
    accepted: Counter = field(default_factory=Counter)  # sensor -> messages accepted
    refused: Counter = field(default_factory=Counter)  # reason -> messages refused
    superseded: int = 0  # accepted but replaced by a later message of the same tick
    actions: int = 0
    generation: int = 0  # time axes so far (+1 per reset): a message encoded across a reset
    # belongs to the old axis and is refused

    def next_seq(self) -> int:
        self.seq_next += 1
        return self.seq_next - 1


@dataclass(frozen=True)
class SessionInfo:
    id: str
    model: str
    control_period_s: float
    history_window_s: float
    start_time: float | None
    newest_tick: int
    newest_time: float | None
    accepted: dict[str, int]
    refused: dict[str, int]
    superseded: int
    actions: int
    replayed_ticks: int
    idle_s: float
    created: float


@dataclass(frozen=True)
class Ack:
    session_id: str
    sensor: str
    timestamp: float
    tick: int
    applied: bool  # False: the tick already holds a later message of this sensor
    newest_tick: int


@dataclass(frozen=True)
class ActionView:
    session_id: str
    timestamp: float
    tick: int
    values: np.ndarray  # [A] float32 in the bundle's units (what the robot applies)
    source: str  # "policy" or "reported"
    recorded: bool  # False: the tick already holds a reported action, which stays


@dataclass(frozen=True)
class BeliefView:
    session_id: str
    timestamp: float | None  # the time asked for (None: the newest tick)
    tick: int
    newest_tick: int
    predicted: bool  # True: predicted beyond the newest tick (nothing observed there)
    mean: np.ndarray  # [L]
    var: np.ndarray  # [L]
    decoded: dict[str, StateEstimate]  # vector sensors: mean and variance [P]
    reward: float
    state_names: tuple[str, ...] = ()
    state: StateEstimate | None = None  # physical state [S]; None without a state head


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

    # -- lifecycle ------------------------------------------------------------------------
    def _timeline(self, model: Model, window_s: float, start_time: float | None) -> Timeline:
        period = model.manifest.control_period
        return Timeline(model.engine, period,
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
        sid = session_id or secrets.token_hex(8)
        m = self.models[name]
        session = Session(sid, m, float(window), self._timeline(m, window, start_time),
                          created=time.time(), last_active=self.clock())
        self.sessions[sid] = session
        return session

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise NotFound(f"unknown session {shown(session_id)} (closed, expired or never "
                           "created)", "unknown_session")
        session.last_active = self.clock()
        return session

    def close(self, session_id: str) -> None:
        self.get(session_id)
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
            s.id, s.model.name, tl.period, s.window_s, tl.t0, tl.head,
            tl.tick_start(tl.head) if tl.head >= 0 else None, dict(s.accepted),
            dict(s.refused), s.superseded, s.actions, tl.replayed_ticks,
            self.clock() - s.last_active, s.created)

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
        return Ack(session.id, sensor, float(timestamp), tick, applied, session.timeline.head)

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
            unit = np.clip(session.model.to_unit(a), -1.0, 1.0).astype(np.float32)
            entry = ActionEntry(float(timestamp), session.next_seq(), unit, "reported")
            tick, recorded = session.timeline.record_action(entry)
        except Exception as e:
            session.refused[getattr(e, "reason", "error")] += 1
            raise
        session.actions += 1
        return ActionView(session.id, float(timestamp), tick, a, "reported", recorded)

    def policy_action(self, session_id: str, timestamp: float) -> ActionView:
        """The policy's action on the belief at ``timestamp`` (the actor's mode on the belief
        mean, in the bundle's units), recorded (in the unit range) as applied over its tick
        unless the controller reported one for that tick."""
        session = self.get(session_id)
        tl = session.timeline
        try:
            tick = tl.locate(timestamp)
        except OutOfRange as e:
            session.refused[e.reason] += 1
            raise
        belief, _ = tl.belief_at(tick)
        m = session.model
        unit = m.act(belief.mean)
        a = np.clip(m.from_unit(unit), m.manifest.action_low, m.manifest.action_high)
        tick, recorded = tl.record_action(
            ActionEntry(float(timestamp), session.next_seq(), unit, "policy"))
        session.actions += recorded
        return ActionView(session.id, float(timestamp), tick, a, "policy", recorded)

    # -- beliefs --------------------------------------------------------------------------
    def belief(self, session_id: str, timestamp: float | None = None) -> BeliefView:
        """The belief at ``timestamp`` (its tick), or at the newest tick; predicted forward
        from the newest tick when later. Changes nothing but the lazy replay."""
        session = self.get(session_id)
        tl = session.timeline
        if timestamp is None:
            tick, belief = tl.newest_belief()
            predicted = tl.head < 0
        else:
            try:
                tick = tl.locate(timestamp)
            except OutOfRange as e:
                session.refused[e.reason] += 1
                raise
            belief, predicted = tl.belief_at(tick)
        model = session.model
        return BeliefView(session.id, timestamp, tick, tl.head, predicted, belief.mean[0],
                          belief.var[0], model.decoded(belief), model.reward(belief.mean),
                          model.state_names, model.state(belief))
