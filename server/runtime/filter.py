"""The online VRKN filter on a bundle: predict, sequential per-sensor updates (skipping
missing ones), the actor, the reward head and the decoders. numpy + ONNX Runtime only.

Batched over N independent streams (robot sessions): beliefs are ``[N, L]``.

Actions here are in the unit range ``[-1, 1]`` (what the transition network was trained on
and the actor outputs); a robot's actions are in the bundle's units: convert at the robot
boundary with ``to_unit`` / ``from_unit`` (``server.runtime.actions``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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


class OnlineFilter:
    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.manifest = bundle.manifest

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
            belief = update(belief, w, w_var, reading.valid)
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
        return self.bundle.reward(features)

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
