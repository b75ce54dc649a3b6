"""One session's time axis: per-tick records over the history window, and the filter
replayed over them. Pure logic (numpy + an ``Engine``); no transport, no clock.

Tick ``k`` covers the half-open interval ``[t0 + k·P, t0 + (k+1)·P)`` of the session's own
clock (P = the bundle's control period). Each retained tick keeps a record: the latest
observation per sensor (encoder outputs cached, so replays never re-run encoders), the
action applied over the tick, and the belief after the tick. Beliefs are computed lazily:
an insert only marks the ticks from its own on as stale, and the next query (or a tick
leaving the window) replays them, so several late messages cost one replay.
See docs/service.md for the rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from server.errors import OutOfRange
from server.runtime.kalman import Belief

# A timestamp this many ticks (relative) below a tick boundary counts as on the boundary,
# so that t0 + k·P computed in floating point lands in tick k.
BOUNDARY_EPS = 1e-9
# Timestamps and start times are seconds within ±MAX_TIME_S (about 31,700 years): there a
# double still resolves 0.25 ms, and (t - t0) / P cannot overflow.
MAX_TIME_S = 1e12


def time_problem(t: float) -> str | None:
    """Why ``t`` cannot be a timestamp or start time (None: it can)."""
    if not math.isfinite(t):
        return f"{t} is not a finite number"
    if abs(t) > MAX_TIME_S:
        return f"{t:.6g} s is beyond ±{MAX_TIME_S:.0e} s"
    return None


class Engine(Protocol):
    """The filter arithmetic a timeline needs (``server.models.FilterEngine`` on a bundle)."""

    sensor_order: tuple[str, ...]
    default_action: np.ndarray  # [A] float32 unit range, held before any action is recorded

    def initial(self) -> Belief: ...
    def predict(self, belief: Belief, action: np.ndarray) -> Belief: ...
    def update(self, belief: Belief, w: np.ndarray, var: np.ndarray) -> Belief: ...


@dataclass
class Observation:
    """A sensor message after encoding: its time, arrival number and encoder outputs."""

    timestamp: float
    seq: int
    w: np.ndarray  # [1, L] float32
    var: np.ndarray  # [1, L] float32


@dataclass
class ActionEntry:
    timestamp: float
    seq: int
    value: np.ndarray  # [A] float32 in the unit range [-1, 1] (the session converts)
    source: str  # "reported" (by the controller) or "policy" (computed by the service)

    def rank(self) -> tuple[int, float, int]:
        # A reported action beats the policy's; then the latest timestamp, then arrival.
        return (1 if self.source == "reported" else 0, self.timestamp, self.seq)


@dataclass
class TickRecord:
    tick: int
    observations: dict[str, Observation] = field(default_factory=dict)
    action: ActionEntry | None = None  # recorded for this tick, if any
    belief: Belief | None = None  # posterior after this tick's observations
    applied: np.ndarray | None = None  # unit action applied over this tick: recorded or held


class Timeline:
    def __init__(self, engine: Engine, period: float, window_ticks: int, max_gap_ticks: int,
                 t0: float | None = None):
        if window_ticks < 1 or max_gap_ticks < 1 or period <= 0:
            raise ValueError("timeline: period, window and gap must be positive")
        self.engine = engine
        self.period = float(period)
        self.window_ticks = int(window_ticks)
        self.max_gap_ticks = int(max_gap_ticks)
        self.t0 = t0
        self.head = -1  # the newest tick; -1 before anything was recorded
        self.valid_upto = -1  # beliefs are up to date for ticks <= valid_upto
        self.records: dict[int, TickRecord] = {}
        self.computed_upto = -1  # the highest tick ever computed (to count replays)
        self.replayed_ticks = 0  # ticks recomputed because of late inserts (a counter)

    # -- time -----------------------------------------------------------------------------
    def tick_of(self, t: float) -> int:
        t0 = t if self.t0 is None else self.t0
        return math.floor((t - t0) / self.period + BOUNDARY_EPS)

    def tick_start(self, tick: int) -> float:
        return (self.t0 or 0.0) + tick * self.period

    @property
    def oldest_accepted(self) -> int:
        """The oldest tick that still accepts messages (and answers queries)."""
        return max(0, self.head - self.window_ticks + 1)

    def locate(self, t: float) -> int:
        """The tick of a message at ``t``, or OutOfRange when it is before the start, older
        than the history window, or too far beyond the newest tick. Changes nothing."""
        problem = time_problem(t)
        if problem is not None:
            raise OutOfRange(f"timestamp {problem}", "bad_timestamp")
        ticks = (t - (t if self.t0 is None else self.t0)) / self.period
        if not math.isfinite(ticks):  # only with a start time beyond the bound (restored)
            raise OutOfRange(f"timestamp {t:.6g} is too far from the session's start",
                             "bad_timestamp")
        tick = self.tick_of(t)
        if tick < 0:
            raise OutOfRange(f"timestamp {t:.6f} is before the session's start "
                             f"{self.t0:.6f}", "before_start")
        if tick < self.oldest_accepted:
            age = self.tick_start(self.head) - t
            raise OutOfRange(
                f"timestamp {t:.6f} is {age:.3f} s older than the newest tick "
                f"(tick {self.head}, {self.tick_start(self.head):.6f}); the history window "
                f"is {self.window_ticks * self.period:.3f} s", "too_old")
        ahead = tick - max(self.head, 0)
        if ahead > self.max_gap_ticks:
            raise OutOfRange(
                f"timestamp {t:.6f} is {ahead * self.period:.3f} s beyond the newest tick; "
                f"the limit is {self.max_gap_ticks * self.period:.3f} s (reset the session "
                "to start a new time axis)", "too_far_ahead")
        return tick

    # -- inserts ----------------------------------------------------------------------------
    def _claim(self, t: float) -> TickRecord:
        tick = self.locate(t)
        if self.t0 is None:
            self.t0 = float(t)
        if tick > self.head:
            self._advance(tick)
        return self.records[tick]

    def insert_observation(self, sensor: str, obs: Observation) -> tuple[int, bool]:
        """Record ``obs`` in its tick; returns (tick, applied). ``applied`` is False when the
        tick already holds a later message of this sensor (latest timestamp wins; equal
        timestamps: the later arrival)."""
        rec = self._claim(obs.timestamp)
        old = rec.observations.get(sensor)
        if old is not None and (obs.timestamp, obs.seq) < (old.timestamp, old.seq):
            return rec.tick, False
        rec.observations[sensor] = obs
        self.valid_upto = min(self.valid_upto, rec.tick - 1)
        return rec.tick, True

    def record_action(self, entry: ActionEntry) -> tuple[int, bool]:
        """Record the action applied over its tick; returns (tick, applied). A reported
        action beats a policy action of the same tick, whatever the order."""
        rec = self._claim(entry.timestamp)
        if rec.action is not None and entry.rank() < rec.action.rank():
            return rec.tick, False
        rec.action = entry
        self.valid_upto = min(self.valid_upto, rec.tick - 1)
        return rec.tick, True

    def _advance(self, tick: int) -> None:
        for k in range(self.head + 1, tick + 1):
            self.records[k] = TickRecord(k)
        self.head = tick
        base = self.head - self.window_ticks  # kept (final) to replay the oldest tick from
        if base > 0:
            self.materialize(base)
            for k in [k for k in self.records if k < base]:
                del self.records[k]

    # -- the filter ---------------------------------------------------------------------
    def materialize(self, upto: int) -> None:
        """Bring the beliefs of ticks <= ``upto`` up to date (prediction with the action
        applied over the previous tick, then this tick's observations in sensor order)."""
        engine = self.engine
        start = self.valid_upto + 1
        for k in range(start, upto + 1):
            rec = self.records[k]
            if k == 0:
                prior, held = engine.initial(), engine.default_action
            else:
                prev = self.records[k - 1]
                prior, held = engine.predict(prev.belief, prev.applied), prev.applied
            belief = prior
            for name in engine.sensor_order:
                obs = rec.observations.get(name)
                if obs is not None:
                    belief = engine.update(belief, obs.w, obs.var)
            rec.belief = belief
            rec.applied = rec.action.value if rec.action is not None else held
            if k <= self.computed_upto:
                self.replayed_ticks += 1
        if upto >= start:
            self.valid_upto = upto
            self.computed_upto = max(self.computed_upto, upto)

    def belief_at(self, tick: int) -> tuple[Belief, bool]:
        """The belief at ``tick`` (from ``locate``) and whether it was predicted beyond the
        newest tick. Predictions beyond the newest tick use the held action and are not
        stored: the timeline does not change (apart from the lazy replay)."""
        if self.head < 0:
            belief, action, start = self.engine.initial(), self.engine.default_action, 0
        elif tick <= self.head:
            self.materialize(tick)
            return self.records[tick].belief, False
        else:
            self.materialize(self.head)
            rec = self.records[self.head]
            belief, action, start = rec.belief, rec.applied, self.head
        for _ in range(tick - start):
            belief = self.engine.predict(belief, action)
        return belief, tick > self.head

    def newest_belief(self) -> tuple[int, Belief]:
        if self.head < 0:
            return 0, self.engine.initial()
        self.materialize(self.head)
        return self.head, self.records[self.head].belief
