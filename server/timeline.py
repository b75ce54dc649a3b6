"""One session's time axis: per-tick records over the history window, and the replay
plans of the filter over them. Pure logic and bookkeeping; it runs no network: it says
what to compute (``plan``: a ``Chain`` for ``OnlineFilter.run_chains``) and takes the
results back (``commit``), so the arithmetic can run batched across sessions in a worker
thread while the records keep changing on the event loop. No transport, no clock.

Tick ``k`` covers the half-open interval ``[t0 + k·P, t0 + (k+1)·P)`` of the session's own
clock (P = the bundle's control period). Each retained tick keeps a record: the latest
observation per sensor (encoder outputs cached, so replays never re-run encoders), the
action applied over the tick, and the belief after the tick. Beliefs are computed lazily:
an observation marks its own tick and the later ones stale, an action only the ticks after
it (a tick's belief does not depend on the action applied over it), and the next query
replays them, so several late messages cost one replay. See docs/service.md for the rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from server.errors import OutOfRange
from server.runtime.filter import Chain, Step, Update
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


class Layout(NamedTuple):
    """What a timeline needs to know of its model: the sensors in fusion order and sizes."""

    sensors: tuple[str, ...]
    latent_size: int
    action_size: int

    @classmethod
    def of(cls, manifest) -> Layout:
        return cls(tuple(s.name for s in manifest.sensors), manifest.latent_size,
                   manifest.action_size)


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
    # The timeline's edit number when the observations / the applied action last changed:
    # a plan made before it cannot commit this tick (runtime only, not saved).
    obs_edit: int = 0
    action_edit: int = 0


@dataclass(frozen=True)
class TimelineState:
    """Everything a timeline is, for snapshots (``Timeline.to_state`` / ``from_state``)."""

    t0: float | None
    period: float
    window_ticks: int
    max_gap_ticks: int
    head: int
    valid_upto: int
    computed_upto: int
    replayed_ticks: int
    records: tuple[TickRecord, ...]


@dataclass(frozen=True)
class Replay:
    """A plan: ``chain`` runs the ticks ``start, start+1, ...``; its first ``stored`` steps
    are ticks up to the newest (committed to the records), the rest predictions beyond it.
    ``known`` holds the up-to-date beliefs of the asked ticks before ``start``."""

    start: int
    chain: Chain
    stored: int
    edits: int
    head: int
    known: dict[int, Belief]
    # (step, sensor index): that step also applies the pending observation's update
    pending: tuple[int, int] | None = None

    def with_update(self, w: np.ndarray, var: np.ndarray) -> Chain:
        """The chain with the pending observation's encoder outputs ``[1, L]`` in place."""
        if self.pending is None:
            return self.chain
        at, sensor = self.pending
        steps = list(self.chain.steps)
        step = steps[at]
        updates = sorted((*step.updates, Update(sensor, w, var)), key=lambda u: u.sensor)
        steps[at] = Step(step.action, tuple(updates))
        return Chain(self.chain.prior, tuple(steps))

    def belief(self, tick: int, results: list[Belief]) -> Belief:
        """The belief at ``tick`` from ``results`` (``run_chains`` of ``chain``)."""
        return self.known[tick] if tick < self.start else results[tick - self.start]


class Pending(NamedTuple):
    """An observation not recorded yet (``Timeline.plan``): its sensor, the tick it lands
    in (``locate``), its timestamp and arrival number."""

    sensor: str
    tick: int
    timestamp: float
    seq: int


_EMPTY = TickRecord(-1)  # a tick the pending observation would create: nothing recorded


class Timeline:
    def __init__(self, layout: Layout, period: float, window_ticks: int, max_gap_ticks: int,
                 t0: float | None = None):
        if window_ticks < 1 or max_gap_ticks < 1 or period <= 0:
            raise ValueError("timeline: period, window and gap must be positive")
        self.layout = layout
        self.default_action = np.zeros(layout.action_size, np.float32)  # unit 0
        self.period = float(period)
        self.window_ticks = int(window_ticks)
        self.max_gap_ticks = int(max_gap_ticks)
        self.t0 = t0
        self.head = -1  # the newest tick; -1 before anything was recorded
        self.valid_upto = -1  # beliefs (and applied actions) are up to date for ticks <= this
        self.records: dict[int, TickRecord] = {}
        self.computed_upto = -1  # the highest tick ever committed (to count replays)
        self.replayed_ticks = 0  # committed ticks that had been committed before (a counter)
        self.edits = 0  # changes to observations and actions so far

    # -- save / restore -------------------------------------------------------------------
    def to_state(self) -> TimelineState:
        """A consistent copy (records copied, arrays shared: they are never modified)."""
        return TimelineState(
            self.t0, self.period, self.window_ticks, self.max_gap_ticks, self.head,
            self.valid_upto, self.computed_upto, self.replayed_ticks,
            tuple(replace(self.records[k], observations=dict(self.records[k].observations))
                  for k in sorted(self.records)))

    @classmethod
    def from_state(cls, layout: Layout, state: TimelineState) -> Timeline:
        """A timeline from ``to_state``'s output, checked against ``layout`` (ValueError
        naming what is wrong)."""
        if state.t0 is not None and time_problem(state.t0) is not None:
            raise ValueError(f"start time {state.t0}: {time_problem(state.t0)}")
        tl = cls(layout, state.period, state.window_ticks, state.max_gap_ticks, state.t0)
        tl.head, tl.valid_upto = int(state.head), int(state.valid_upto)
        tl.computed_upto, tl.replayed_ticks = int(state.computed_upto), int(state.replayed_ticks)
        tl.records = {r.tick: replace(r, obs_edit=0, action_edit=0) for r in state.records}
        if len(tl.records) != len(state.records):
            raise ValueError("two records of the same tick")
        for rec in tl.records.values():
            _check_record(rec, layout)
        if tl.valid_upto > tl.head:
            raise ValueError(f"beliefs up to tick {tl.valid_upto} beyond the newest tick "
                             f"{tl.head}")
        if tl.head >= 0:
            lo = max(0, min(tl.valid_upto, tl.head - tl.window_ticks))
            if any(k not in tl.records for k in range(lo, tl.head + 1)):
                raise ValueError("the records of the history window are incomplete")
            if any(tl.records[k].belief is None or tl.records[k].applied is None
                   for k in range(lo, tl.valid_upto + 1)):
                raise ValueError("a tick marked up to date has no belief")
        return tl

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
            for k in range(self.head + 1, tick + 1):
                self.records[k] = TickRecord(k)
            self.head = tick
            self._trim()
        return self.records[tick]

    def insert_observation(self, sensor: str, obs: Observation) -> tuple[int, bool]:
        """Record ``obs`` in its tick; returns (tick, applied). ``applied`` is False when the
        tick already holds a later message of this sensor (latest timestamp wins; equal
        timestamps: the later arrival). Marks this tick and the later ones stale."""
        if sensor not in self.layout.sensors:
            raise ValueError(f"unknown sensor {sensor!r}")
        rec = self._claim(obs.timestamp)
        old = rec.observations.get(sensor)
        if old is not None and (obs.timestamp, obs.seq) < (old.timestamp, old.seq):
            return rec.tick, False
        rec.observations[sensor] = obs
        self.edits += 1
        rec.obs_edit = self.edits
        self.valid_upto = min(self.valid_upto, rec.tick - 1)
        return rec.tick, True

    def record_action(self, entry: ActionEntry) -> tuple[int, bool]:
        """Record the action applied over its tick; returns (tick, applied). A reported
        action beats a policy action of the same tick, whatever the order. Only the ticks
        after it become stale (and none when the applied action does not change)."""
        rec = self._claim(entry.timestamp)
        if rec.action is not None and entry.rank() < rec.action.rank():
            return rec.tick, False
        rec.action = entry
        if rec.tick > self.valid_upto or not np.array_equal(rec.applied, entry.value):
            self.edits += 1
            rec.action_edit = self.edits
            if rec.tick <= self.valid_upto:  # its belief stands; what follows it does not
                rec.applied = entry.value
                self.valid_upto = rec.tick
        return rec.tick, True

    def _trim(self) -> None:
        """Drop the records no query or replay can need: before the newest tick's window
        (keeping the tick before the oldest accepted one, to replay from) and before the
        oldest up-to-date belief (replays start from there)."""
        floor = min(self.head - self.window_ticks, self.valid_upto)
        if floor > 0:
            for k in [k for k in self.records if k < floor]:
                del self.records[k]

    @property
    def backlog(self) -> int:
        """Ticks leaving the window without an up-to-date belief (their records are kept
        until one is computed): settle the timeline when this reaches the window."""
        return max(0, self.head - self.window_ticks - self.valid_upto)

    # -- the filter -------------------------------------------------------------------------
    def _applied(self, tick: int) -> np.ndarray:
        return self.default_action if tick < 0 else self.records[tick].applied

    def plan(self, ticks: list[int], pending: Pending | None = None) -> Replay:
        """What to compute to answer beliefs at ``ticks`` (each from ``locate``, or 0): the
        stale ticks up to the newest of them (prediction with the action applied over the
        previous tick, then the tick's observations in sensor order), then predictions
        beyond the newest tick with the held action (not stored: the timeline does not
        change but for the lazy replay).

        ``pending``: plan as if that observation were inserted (its encoder outputs are not
        known yet: ``Replay.pending`` says which step gets its update). Nothing changes
        here; the caller inserts it later and commits only if the insert went as planned
        (``commit``'s checks refuse what changed meanwhile)."""
        head, valid = self.head, self.valid_upto
        order = {name: i for i, name in enumerate(self.layout.sensors)}
        if pending is not None:
            rec = self.records.get(pending.tick)
            old = None if rec is None else rec.observations.get(pending.sensor)
            if old is not None and (pending.timestamp, pending.seq) < (old.timestamp, old.seq):
                pending = None  # it would not be applied: the tick keeps the later one
            else:
                head, valid = max(head, pending.tick), min(valid, pending.tick - 1)
        upto = max(ticks)
        start = valid + 1
        prior = None if start == 0 else self.records[start - 1].belief
        held = self._applied(start - 1)
        steps, at = [], None
        for k in range(start, min(upto, head) + 1):
            rec = self.records.get(k) or _EMPTY
            observed = rec.observations.items()
            if pending is not None and k == pending.tick:
                at = len(steps)
                observed = [(n, o) for n, o in observed if n != pending.sensor]
            updates = tuple(Update(order[n], o.w, o.var) for n, o in
                            sorted(observed, key=lambda item: order[item[0]]))
            steps.append(Step(None if k == 0 else held, updates))
            if rec.action is not None:
                held = rec.action.value
        stored = len(steps)
        for k in range(max(start, head + 1), upto + 1):
            steps.append(Step(None if k == 0 else held))
        known = {k: self.records[k].belief for k in ticks if k < start}
        slot = None if at is None else (at, order[pending.sensor])
        return Replay(start, Chain(prior, tuple(steps)), stored, self.edits, head, known, slot)

    def commit(self, replay: Replay, results: list[Belief]) -> None:
        """Store the computed beliefs of ``replay`` for the ticks whose inputs have not
        changed since it was planned (the rest stay stale), count the recomputed ones."""
        if len(results) != len(replay.chain.steps):
            raise ValueError(f"commit: {len(results)} beliefs for "
                             f"{len(replay.chain.steps)} steps")
        if self.valid_upto != replay.start - 1:
            return  # something before the chain changed meanwhile
        applied = self._applied(replay.start - 1)
        for i in range(replay.stored):
            k = replay.start + i
            rec = self.records.get(k)
            if rec is None or rec.obs_edit > replay.edits or (
                    k > 0 and self.records[k - 1].action_edit > replay.edits):
                break
            rec.belief = results[i]
            if rec.action is not None:
                applied = rec.action.value
            rec.applied = applied
            self.valid_upto = k
            if k <= self.computed_upto:
                self.replayed_ticks += 1
        self.computed_upto = max(self.computed_upto, self.valid_upto)
        self._trim()


def _check_shape(x: np.ndarray | None, shape: tuple[int, ...], what: str) -> None:
    if x is not None and x.shape != shape:
        raise ValueError(f"{what} has shape {list(x.shape)}, the model needs {list(shape)}")


def _check_record(rec: TickRecord, layout: Layout) -> None:
    latent, actions = layout.latent_size, layout.action_size
    for name, o in rec.observations.items():
        if name not in layout.sensors:
            raise ValueError(f"tick {rec.tick}: unknown sensor {name!r}")
        _check_shape(o.w, (1, latent), f"tick {rec.tick} {name} w")
        _check_shape(o.var, (1, latent), f"tick {rec.tick} {name} var")
    if rec.action is not None:
        _check_shape(rec.action.value, (actions,), f"tick {rec.tick} action")
        if rec.action.source not in ("reported", "policy"):
            raise ValueError(f"tick {rec.tick}: action source {rec.action.source!r}")
    if rec.belief is not None:
        _check_shape(rec.belief.mean, (1, latent), f"tick {rec.tick} belief mean")
        _check_shape(rec.belief.var, (1, latent), f"tick {rec.tick} belief var")
    _check_shape(rec.applied, (actions,), f"tick {rec.tick} applied action")
