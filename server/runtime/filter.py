"""The one filter engine on a bundle: predict, sequential per-sensor updates (skipping
missing ones), the actor, the reward head, the decoders and the state head, batched over N
independent streams (robot sessions; beliefs ``[N, L]``), one ONNX call per network per
batch. numpy + ONNX Runtime only.

The offline runtime (evaluation, the robot-sim's in-process reference, benchmarks) calls
``step``; the service calls ``run_chains`` (each session's ticks to bring up to date, run
in lockstep across sessions: one transition call per step for every session at once) and
the output heads on the stacked beliefs of all its queued queries.

Actions here are in the unit range ``[-1, 1]`` (what the transition network was trained on
and the actor outputs); a robot's actions are in the bundle's units: convert at the robot
boundary with ``to_unit`` / ``from_unit`` (``server.runtime.actions``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from server.runtime import actions
from server.runtime.bundle import Bundle
from server.runtime.kalman import Belief, predict, update
from server.runtime.uncertainty import StateEstimate, estimate


@dataclass(frozen=True)
class Reading:
    """One sensor's values for N streams; rows where ``valid`` is False are ignored."""

    value: np.ndarray  # [N, *shape]
    valid: np.ndarray  # [N] bool


class Update(NamedTuple):
    """One sensor's encoder outputs for one stream: ``sensor`` is its index in the manifest's
    sensor order (the fusion order)."""

    sensor: int
    w: np.ndarray  # [1, L]
    var: np.ndarray  # [1, L]


@dataclass(frozen=True)
class Step:
    """One tick of one stream: predict with ``action`` (unit range ``[A]``, the action
    applied over the previous tick; None: the first tick, which starts from the initial
    belief), then apply ``updates`` in sensor order."""

    action: np.ndarray | None
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True)
class Chain:
    """Consecutive ticks of one stream from ``prior`` (``[1, L]``; None: the first step is
    the first tick)."""

    prior: Belief | None
    steps: tuple[Step, ...]


class OnlineFilter:
    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.sensor_order = tuple(s.name for s in self.manifest.sensors)
        self.vector_decoders = tuple(s.name for s in self.manifest.sensors
                                     if s.kind == "vector" and bundle.has_decoder(s.name))

    def initial(self, n: int) -> Belief:
        """The belief before any observation (the first step updates it without predicting)."""
        m = self.manifest
        return Belief(np.repeat(m.initial_mean[None], n, 0), np.repeat(m.initial_var[None], n, 0))

    def check_reading(self, name: str, reading: Reading, n: int) -> None:
        try:
            info = self.manifest.sensor(name)
        except KeyError:
            raise ValueError(f"unknown sensor {name!r}; the bundle has "
                             f"{[s.name for s in self.manifest.sensors]}") from None
        value, valid = reading.value, reading.valid
        if value.shape != (n, *info.shape):
            raise ValueError(f"sensor {name!r}: shape {list(value.shape)}, expected "
                             f"{[n, *info.shape]}")
        if value.dtype != info.dtype:
            raise ValueError(f"sensor {name!r}: dtype {value.dtype}, expected {info.dtype}")
        if valid.shape != (n,) or valid.dtype != np.bool_:
            raise ValueError(f"sensor {name!r}: valid must be bool [{n}], got "
                             f"{valid.dtype} {list(valid.shape)}")
        if info.kind == "vector" and not bool(np.isfinite(value[valid]).all()):
            raise ValueError(f"sensor {name!r}: NaN or infinite values")

    def check_action(self, action: np.ndarray, n: int) -> None:
        if action.shape != (n, self.manifest.action_size) or action.dtype != np.float32:
            raise ValueError(f"action: {action.dtype} {list(action.shape)}, expected float32 "
                             f"[{n}, {self.manifest.action_size}]")
        if not bool(np.isfinite(action).all()):
            raise ValueError("action: NaN or infinite values")

    def to_unit(self, action: np.ndarray) -> np.ndarray:
        """A robot's action (bundle units) -> the unit range the filter works in."""
        return actions.to_unit(action, self.manifest.action_low, self.manifest.action_high)

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        """A unit action (the actor's) -> the bundle's units, for the robot."""
        return actions.from_unit(unit, self.manifest.action_low, self.manifest.action_high)

    def predict(self, belief: Belief, action: np.ndarray) -> Belief:
        """The time update with the transition network (dropout off); ``action`` ``[N, A]``
        in the unit range (``to_unit`` of the robot's action)."""
        self.check_action(action, belief.mean.shape[0])
        a, b, q = self.bundle.transition(belief.mean, action)
        return predict(belief, a, b, q)

    def update(self, belief: Belief, w: np.ndarray, w_var: np.ndarray,
               valid: np.ndarray | None = None) -> Belief:
        """The Joseph-form update with encoder outputs ``w, w_var`` ``[N, L]``; rows where
        ``valid`` is False (default: all valid) keep the prior bit for bit."""
        n, latent = belief.mean.shape
        if w.shape != (n, latent) or w_var.shape != (n, latent):
            raise ValueError(f"update: w {list(w.shape)} and var {list(w_var.shape)}, "
                             f"expected [{n}, {latent}]")
        return update(belief, w, w_var, np.ones(n, bool) if valid is None else valid)

    def run_chains(self, chains: Sequence[Chain]) -> list[list[Belief]]:
        """The belief after every step of every chain (``[1, L]`` each), the chains run in
        lockstep: step i of all chains that have one is one transition call and one update
        per sensor on the stacked rows. Elementwise arithmetic is the same as one chain at a
        time, bit for bit; only the networks see a larger batch."""
        m = self.manifest
        latent = m.latent_size
        out: list[list[Belief]] = [[] for _ in chains]
        current = [c.prior for c in chains]
        for c in chains:
            if c.prior is not None and c.prior.mean.shape != (1, latent):
                raise ValueError(f"chain prior: shape {list(c.prior.mean.shape)}, expected "
                                 f"[1, {latent}]")
        depth = max((len(c.steps) for c in chains), default=0)
        for i in range(depth):
            rows = [j for j, c in enumerate(chains) if len(c.steps) > i]
            steps = [chains[j].steps[i] for j in rows]
            mean = np.empty((len(rows), latent), np.float32)
            var = np.empty((len(rows), latent), np.float32)
            first = [r for r, s in enumerate(steps) if s.action is None]
            moving = [r for r, s in enumerate(steps) if s.action is not None]
            for r in first:
                if current[rows[r]] is not None:
                    raise ValueError("chain: a step without an action follows a belief "
                                     "(only the first tick starts from the initial belief)")
            if first:
                mean[first], var[first] = m.initial_mean, m.initial_var
            if moving:
                if any(current[rows[r]] is None for r in moving):
                    raise ValueError("chain: the first tick has an action (it starts from "
                                     "the initial belief, without a prediction)")
                src = Belief(np.concatenate([current[rows[r]].mean for r in moving]),
                             np.concatenate([current[rows[r]].var for r in moving]))
                pred = self.predict(src, np.stack([steps[r].action for r in moving]))
                mean[moving], var[moving] = pred.mean, pred.var
            by_sensor: list[list[tuple[int, Update]]] = [[] for _ in self.sensor_order]
            for r, s in enumerate(steps):
                for u in s.updates:
                    by_sensor[u.sensor].append((r, u))
            for entries in by_sensor:  # the manifest's sensor order
                if not entries:
                    continue
                idx = np.array([r for r, _ in entries])
                post = self.update(Belief(mean[idx], var[idx]),
                                   np.concatenate([u.w for _, u in entries]),
                                   np.concatenate([u.var for _, u in entries]))
                mean[idx], var[idx] = post.mean, post.var
            for r, j in enumerate(rows):
                b = Belief(mean[r:r + 1].copy(), var[r:r + 1].copy())
                out[j].append(b)
                current[j] = b
        return out

    def fuse(self, prior: Belief, readings: Mapping[str, Reading]) -> Belief:
        """Sequential updates in the manifest's sensor order; missing sensors are skipped,
        and encoders only run on the rows where their sensor is present."""
        n, latent = prior.mean.shape
        for name in readings:
            self.check_reading(name, readings[name], n)
        belief = prior
        for info in self.manifest.sensors:
            reading = readings.get(info.name)
            if reading is None or not bool(reading.valid.any()):
                continue
            rows = np.flatnonzero(reading.valid)
            w_rows, var_rows = self.bundle.encode(info.name, reading.value[rows])
            w = np.zeros((n, latent), np.float32)
            w_var = np.ones((n, latent), np.float32)
            w[rows], w_var[rows] = w_rows, var_rows
            belief = self.update(belief, w, w_var, reading.valid)
        return belief

    def step(self, belief: Belief | None, action: np.ndarray | None,
             readings: Mapping[str, Reading]) -> Belief:
        """One control tick: predict with ``action`` (unless ``belief`` is None, the first
        step), then fuse the readings."""
        if belief is None:
            n = next(iter(readings.values())).value.shape[0] if readings else 1
            prior = self.initial(n)
        else:
            if action is None:
                raise ValueError("action: required to predict from an existing belief")
            prior = self.predict(belief, action)
        return self.fuse(prior, readings)

    def features(self, belief: Belief, rng: np.random.Generator | None = None) -> np.ndarray:
        """The actor's input: the belief mean, what the service acts on (the manifest's
        ``actor_features: "mean"``). With ``rng``, a sample of the belief instead (as in
        training; for offline analysis only)."""
        if rng is None:
            return belief.mean
        eps = rng.standard_normal(belief.mean.shape).astype(np.float32)
        return (belief.mean + np.sqrt(belief.var) * eps).astype(np.float32)

    def act(self, features: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """The policy's action in the unit range ``[N, A]`` (``from_unit`` gives the robot's
        action): the mode, or a sample when ``rng`` is given."""
        n = features.shape[0]
        noise = (np.zeros((n, self.manifest.action_size), np.float32) if rng is None else
                 rng.standard_normal((n, self.manifest.action_size)).astype(np.float32))
        mode, sample = self.bundle.actor(features, noise)
        return np.asarray(mode if rng is None else sample, np.float32)

    def reward(self, features: np.ndarray) -> np.ndarray:
        """The reward head's prediction ``[N]``."""
        return np.asarray(self.bundle.reward(features), np.float32).reshape(-1)

    def decode(self, sensor: str, features: np.ndarray) -> np.ndarray:
        return self.bundle.decode(sensor, features)

    def state(self, belief: Belief) -> StateEstimate | None:
        """The simulator-state estimate of each belief (physical units; mean and variance
        from the head under the belief, ``server.runtime.uncertainty``); None when the
        bundle has no state head."""
        if self.manifest.state is None:
            return None
        return estimate(self.bundle.state_head, belief.mean, belief.var)

    def decoded(self, sensor: str, belief: Belief) -> StateEstimate:
        """A vector sensor's decoded estimate with its variance: the decoder under the
        belief plus the decoder's own noise (``decoder_var``; 0 when the bundle has none)."""
        info = self.manifest.sensor(sensor)
        noise = (np.zeros(info.shape, np.float32) if info.decoder_var is None
                 else info.decoder_var)

        def head(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            out = self.bundle.decode(sensor, z)
            return out, np.broadcast_to(noise, out.shape)

        return estimate(head, belief.mean, belief.var)
