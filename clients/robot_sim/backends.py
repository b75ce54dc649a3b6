"""Where the robot-sim's messages go: the service (through a client of ``clients``) or an
in-process online filter on the same bundle (``server.runtime``, the reference the
service must reproduce).

Both take the same calls: ``start(start_time)``, ``send(sensor, t, value,
return_belief)`` -> the decoded belief of the message's tick (or None),
``action(t)`` -> the policy's action in the bundle's units (deterministic: the actor's
mode on the belief mean, mapped from [-1, 1] to the bounds), ``finish()`` -> counters.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from clients.errors import OutOfRangeError
from clients.types import StateEstimate


@dataclass(frozen=True)
class TickBelief:
    tick: int
    mean: np.ndarray
    decoded: dict[str, np.ndarray]
    state: StateEstimate | None = None  # the physical state estimate (None: no head)


class Timings:
    """Wall-clock seconds of each kind of call."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)

    def add(self, kind: str, seconds: float) -> None:
        self.samples[kind].append(seconds)

    def percentiles(self) -> dict[str, dict[str, float]]:
        return {k: {"n": len(v), "p50_ms": 1e3 * float(np.percentile(v, 50)),
                    "p90_ms": 1e3 * float(np.percentile(v, 90)),
                    "p99_ms": 1e3 * float(np.percentile(v, 99)),
                    "max_ms": 1e3 * float(np.max(v))}
                for k, v in sorted(self.samples.items()) if v}


class ServiceBackend:
    """One session on the service. ``client`` is an ``EstimatorClient`` or an
    ``HttpEstimatorClient``; images go as ``encoding`` (png, jpeg or raw)."""

    def __init__(self, client: Any, model: str | None = None, encoding: str = "png"):
        self.client, self.model_name, self.encoding = client, model, encoding
        self.model = client.model(model)
        self.session_id: str | None = None
        self.timings = Timings()
        self.refused: dict[str, int] = defaultdict(int)

    @property
    def control_period(self) -> float:
        return self.model.control_period_s

    def sensors(self) -> dict[str, tuple[int, ...]]:
        return {s.name: s.shape for s in self.model.sensors}

    def start(self, start_time: float) -> None:
        self.session_id = self.client.create_session(self.model.name, start_time).session_id

    def send(self, sensor: str, t: float, value: np.ndarray, return_belief: bool = False
             ) -> TickBelief | None:
        t0 = time.perf_counter()
        try:
            ack = self.client.send_message(self.session_id, sensor, t, value,
                                           return_belief=return_belief,
                                           encoding=self.encoding)
        except OutOfRangeError:  # e.g. a frame later than the history window: counted
            self.refused[f"{sensor}_out_of_range"] += 1
            return None
        self.timings.add(f"{sensor}_message", time.perf_counter() - t0)
        if ack.belief is None:
            return None
        return TickBelief(ack.belief.tick, ack.belief.mean, ack.belief.decoded,
                          ack.belief.state)

    def action(self, t: float) -> np.ndarray:
        t0 = time.perf_counter()
        action = self.client.get_action(self.session_id, t)
        self.timings.add("get_action", time.perf_counter() - t0)
        return action.values

    def abort(self) -> None:
        """Close the session after a failure (best effort; it would expire anyway)."""
        if self.session_id is not None:
            try:
                self.client.close_session(self.session_id, timeout=1.0)
            except Exception:  # the failure being reported matters more
                pass
            self.session_id = None

    def finish(self) -> dict:
        info = self.client.describe_session(self.session_id)
        self.client.close_session(self.session_id)
        self.session_id = None
        return {"accepted": info.accepted, "refused": info.refused,
                "superseded": info.superseded, "replayed_ticks": info.replayed_ticks,
                "actions": info.actions, "client_refused": dict(self.refused)}


class InProcessBackend:
    """The online filter of ``server.runtime`` in this process, one tick at a time: a tick's
    belief is its predecessor's, predicted with that tick's action, then updated with the
    tick's messages (latest per sensor) in the bundle's sensor order; gaps are pure
    predictions with the held action. Messages must come in tick order (no latency).
    Actions are kept in the filter's unit range and returned in the bundle's units, as
    the service does."""

    def __init__(self, bundle: Any):
        from server.runtime import OnlineFilter

        self.bundle = bundle
        self.filter = OnlineFilter(bundle)
        m = bundle.manifest
        self.control_period = m.control_period
        self.timings = Timings()
        self._decoders = [s.name for s in m.sensors
                          if s.kind == "vector" and bundle.has_decoder(s.name)]
        self._held = np.zeros(m.action_size, np.float32)  # unit: the middle of the bounds

    def sensors(self) -> dict[str, tuple[int, ...]]:
        return {s.name: tuple(s.shape) for s in self.bundle.manifest.sensors}

    def start(self, start_time: float) -> None:
        self.t0 = start_time
        self.tick = -1
        self.prev = None  # belief of tick - 1 (None before tick 0)
        self.belief = None  # belief of the current tick, None when stale
        self.readings: dict[str, tuple[float, np.ndarray]] = {}
        self.actions: dict[int, np.ndarray] = {}  # tick -> unit action
        self.counts: dict[str, int] = defaultdict(int)

    def _tick_of(self, t: float) -> int:
        return math.floor((t - self.t0) / self.control_period + 1e-9)

    def _action_of(self, k: int) -> np.ndarray:
        return self.actions.get(k, self._held)

    def _advance(self, k: int) -> None:
        if k < self.tick:
            raise ValueError(f"in-process reference: tick {k} is before the current tick "
                             f"{self.tick} (it takes messages in order; use the service for "
                             "late messages)")
        while self.tick < k:
            self.prev = self._current() if self.tick >= 0 else None
            self.tick += 1
            self._held = self._action_of(self.tick - 1)
            self.readings, self.belief = {}, None

    def _current(self):
        if self.belief is None:
            from server.runtime import Reading

            readings = {name: Reading(v[None], np.array([True]))
                        for name, (_, v) in self.readings.items()}
            action = None if self.prev is None else self._action_of(self.tick - 1)[None]
            self.belief = self.filter.step(self.prev, action, readings)
        return self.belief

    def _view(self) -> TickBelief:
        b = self._current()
        est = self.filter.state(b)
        state = None if est is None else StateEstimate(
            self.bundle.manifest.state.names, est.mean[0], est.var[0])
        return TickBelief(self.tick, b.mean[0], {
            name: self.filter.decoded(name, b).mean[0] for name in self._decoders}, state)

    def send(self, sensor: str, t: float, value: np.ndarray, return_belief: bool = False
             ) -> TickBelief | None:
        t0 = time.perf_counter()
        self._advance(self._tick_of(t))
        old = self.readings.get(sensor)
        if old is None or t >= old[0]:
            self.readings[sensor] = (t, np.asarray(value))
            self.belief = None
        self.counts[sensor] += 1
        out = self._view() if return_belief else None
        self.timings.add(f"{sensor}_message", time.perf_counter() - t0)
        return out

    def action(self, t: float) -> np.ndarray:
        t0 = time.perf_counter()
        k = self._tick_of(t)
        self._advance(k)
        b = self._current()
        unit = self.filter.act(self.filter.features(b))[0]
        self.actions.setdefault(k, unit)
        m = self.bundle.manifest
        a = np.clip(self.filter.from_unit(unit), m.action_low, m.action_high)
        self.timings.add("get_action", time.perf_counter() - t0)
        return a

    def finish(self) -> dict:
        return {"accepted": dict(self.counts), "refused": {}, "replayed_ticks": 0}
