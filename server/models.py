"""The loaded models (bundles) a session can choose, and the filter engine on each.

numpy + ONNX Runtime only (through ``server.runtime``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.runtime import Bundle, OnlineFilter, load_bundle
from server.runtime.kalman import Belief, predict, update
from server.runtime.manifest import SensorInfo
from server.runtime.uncertainty import StateEstimate


class FilterEngine:
    """The arithmetic of one filter step on a bundle, for one stream (``[1, L]`` beliefs).

    The same operations as ``server.runtime.OnlineFilter`` (transition network, then
    Joseph-form updates), with encoder outputs supplied by the caller (cached per message).
    Actions are in the unit range ``[-1, 1]``, as the transition network was trained; the
    session converts robot actions (bundle units) at its boundary.
    """

    def __init__(self, bundle: Bundle):
        m = bundle.manifest
        self.bundle = bundle
        self.sensor_order = tuple(s.name for s in m.sensors)
        # Held before any action: unit 0, the middle of the bundle's bounds.
        self.default_action = np.zeros(m.action_size, np.float32)
        self._initial = Belief(m.initial_mean[None].copy(), m.initial_var[None].copy())
        self._valid = np.ones(1, dtype=bool)

    def initial(self) -> Belief:
        return self._initial  # beliefs are never modified in place

    def predict(self, belief: Belief, action: np.ndarray) -> Belief:
        """The time update with ``action`` ``[A]`` in the unit range."""
        a, b, q = self.bundle.transition(belief.mean, action[None])
        return predict(belief, a, b, q)

    def update(self, belief: Belief, w: np.ndarray, var: np.ndarray) -> Belief:
        return update(belief, w, var, self._valid)


@dataclass
class Model:
    """A verified bundle under a name, with what the service needs from it."""

    name: str
    bundle: Bundle
    engine: FilterEngine
    digest: str  # SHA-256 of manifest.json: identifies the bundle in snapshots

    def __post_init__(self) -> None:
        self.filter = OnlineFilter(self.bundle)

    @property
    def manifest(self):
        return self.bundle.manifest

    def sensor(self, name: str) -> SensorInfo | None:
        for s in self.manifest.sensors:
            if s.name == name:
                return s
        return None

    def encode(self, sensor: str, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encoder outputs (w, var) ``[N, L]`` for a batch of raw observations."""
        return self.bundle.encode(sensor, batch)

    def act(self, mean: np.ndarray) -> np.ndarray:
        """The policy's deterministic action (the actor's mode on the belief mean, the
        manifest's ``actor_features: "mean"``) in the unit range: ``[A]`` float32
        (``from_unit`` gives the robot's action)."""
        noise = np.zeros((1, self.manifest.action_size), np.float32)
        mode, _ = self.bundle.actor(mean, noise)
        return np.asarray(mode[0], np.float32)

    def to_unit(self, action: np.ndarray) -> np.ndarray:
        """A robot's action (bundle units) -> the unit range of the filter and actor."""
        return self.filter.to_unit(action)

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        """A unit action -> the bundle's units (what the robot applies)."""
        return self.filter.from_unit(unit)

    def reward(self, mean: np.ndarray) -> float:
        return float(self.bundle.reward(mean)[0])

    def decoded(self, belief: Belief) -> dict[str, StateEstimate]:
        """Decoded estimates (mean and variance ``[P]``) of the vector sensors that have a
        decoder (images are not decoded: 12k values per belief are rarely wanted)."""
        out = {}
        for s in self.manifest.sensors:
            if s.kind == "vector" and self.bundle.has_decoder(s.name):
                est = self.filter.decoded(s.name, belief)
                out[s.name] = StateEstimate(est.mean[0], est.var[0])
        return out

    def state(self, belief: Belief) -> StateEstimate | None:
        """The simulator-state estimate ``[S]`` (None without a state head)."""
        est = self.filter.state(belief)
        return None if est is None else StateEstimate(est.mean[0], est.var[0])

    @property
    def state_names(self) -> tuple[str, ...]:
        state = self.manifest.state
        return () if state is None else state.names


def parse_bundle_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (the name is then the folder's name)."""
    if "=" in spec:
        name, path = spec.split("=", 1)
        return name.strip(), Path(path)
    path = Path(spec)
    return path.resolve().name, path


def load_models(specs: Sequence[str], providers: str = "cpu", threads: int = 1
                ) -> dict[str, Model]:
    """Load and verify every bundle; the first is the default model. BundleError on any."""
    models: dict[str, Model] = {}
    for spec in specs:
        name, path = parse_bundle_spec(spec)
        if not name or name in models:
            raise ValueError(f"bundle {spec!r}: the model name {name!r} is empty or repeated")
        bundle = load_bundle(path, providers=providers, threads=threads)
        digest = hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()
        models[name] = Model(name, bundle, FilterEngine(bundle), digest)
    return models
