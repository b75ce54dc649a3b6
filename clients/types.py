"""What the service answers, as plain dataclasses with numpy arrays, built from either
transport (protobuf messages or the HTTP API's JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clients.errors import EstimatorError, error_for


@dataclass(frozen=True)
class SensorSpec:
    name: str
    kind: str  # "image" or "vector"
    shape: tuple[int, ...]
    dtype: str
    decoded: bool  # beliefs carry a decoded estimate of this sensor


@dataclass(frozen=True)
class ModelInfo:
    name: str
    is_default: bool
    control_period_s: float
    latent_size: int
    action_size: int
    action_low: np.ndarray
    action_high: np.ndarray
    sensors: tuple[SensorSpec, ...]  # in fusion order
    code_version: str
    manifest_sha256: str
    state_names: tuple[str, ...] = ()  # the estimated physical state; () without a head

    def sensor(self, name: str) -> SensorSpec:
        for s in self.sensors:
            if s.name == name:
                return s
        raise KeyError(f"model {self.name!r} has no sensor {name!r}; it has "
                       f"{[s.name for s in self.sensors]}")


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    model: str
    control_period_s: float
    history_window_s: float
    start_time: float | None
    newest_tick: int
    newest_time: float | None
    accepted: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    superseded: int = 0
    actions: int = 0
    replayed_ticks: int = 0
    idle_s: float = 0.0


Z90 = 1.6448536269514722  # half-width of a central 90% Gaussian interval, in std


@dataclass(frozen=True)
class StateEstimate:
    """The robot's physical state: named elements, mean and variance in physical units."""

    names: tuple[str, ...]
    mean: np.ndarray  # float32 [S]
    var: np.ndarray  # float32 [S]

    def __getitem__(self, name: str) -> tuple[float, float]:
        """(mean, std) of element ``name``, e.g. ``state["pole_angular_velocity"]``."""
        try:
            i = self.names.index(name)
        except ValueError:
            raise KeyError(f"no state element {name!r}; the state has {list(self.names)}"
                           ) from None
        return float(self.mean[i]), float(np.sqrt(self.var[i]))

    def interval(self, name: str, z: float = Z90) -> tuple[float, float]:
        """The central interval of element ``name`` (90% by default)."""
        mean, std = self[name]
        return mean - z * std, mean + z * std


@dataclass(frozen=True)
class Belief:
    session_id: str
    timestamp: float | None
    tick: int
    newest_tick: int
    predicted: bool
    mean: np.ndarray  # float32 [L]
    var: np.ndarray  # float32 [L]
    decoded: dict[str, np.ndarray]  # decoded estimates in sensor units, e.g. "proprio"
    reward: float
    state: StateEstimate | None = None  # the physical state; None without a state head
    decoded_var: dict[str, np.ndarray] = field(default_factory=dict)  # their variances


@dataclass(frozen=True)
class Ack:
    sequence: int
    session_id: str
    sensor: str
    tick: int
    applied: bool
    newest_tick: int
    belief: Belief | None = None
    error: EstimatorError | None = None  # set when a streamed message was refused

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Action:
    session_id: str
    timestamp: float
    tick: int
    values: np.ndarray  # float32 [A]
    source: str  # "policy" or "reported"
    recorded: bool


def pick_model(models: list[ModelInfo], name: str | None) -> ModelInfo:
    """The model called ``name``, or the server's default one when ``name`` is None."""
    for m in models:
        if (name is None and m.is_default) or m.name == name:
            return m
    raise KeyError(f"no model {name!r} on the server; it has {[m.name for m in models]}")


def _f32(values: Any) -> np.ndarray:
    return np.asarray(list(values), np.float32)


# -- from protobuf ---------------------------------------------------------------------
def model_from_pb(m: Any) -> ModelInfo:
    return ModelInfo(
        name=m.name, is_default=m.is_default, control_period_s=m.control_period_s,
        latent_size=m.latent_size, action_size=m.action_size, action_low=_f32(m.action_low),
        action_high=_f32(m.action_high),
        sensors=tuple(SensorSpec(s.name, s.kind, tuple(s.shape), s.dtype, s.decoded)
                      for s in m.sensors),
        code_version=m.code_version, manifest_sha256=m.manifest_sha256,
        state_names=tuple(m.state_names))


def session_from_pb(s: Any) -> SessionInfo:
    return SessionInfo(
        session_id=s.session_id, model=s.model, control_period_s=s.control_period_s,
        history_window_s=s.history_window_s,
        start_time=s.start_time if s.HasField("start_time") else None,
        newest_tick=s.newest_tick,
        newest_time=s.newest_time if s.HasField("newest_time") else None,
        accepted=dict(s.accepted), refused=dict(s.refused), superseded=s.superseded,
        actions=s.actions, replayed_ticks=s.replayed_ticks, idle_s=s.idle_s)


def belief_from_pb(b: Any) -> Belief:
    return Belief(
        session_id=b.session_id, timestamp=b.timestamp if b.HasField("timestamp") else None,
        tick=b.tick, newest_tick=b.newest_tick, predicted=b.predicted, mean=_f32(b.mean),
        var=_f32(b.var), decoded={k: _f32(v.values) for k, v in b.decoded.items()},
        reward=float(b.reward),
        state=(StateEstimate(tuple(b.state.names), _f32(b.state.mean), _f32(b.state.var))
               if b.HasField("state") else None),
        decoded_var={k: _f32(v.values) for k, v in b.decoded_var.items()})


def ack_from_pb(a: Any) -> Ack:
    error = None
    if a.HasField("error"):
        error = error_for(a.error.code, a.error.message, a.error.reason or None)
    return Ack(sequence=a.sequence, session_id=a.session_id, sensor=a.sensor, tick=a.tick,
               applied=a.applied, newest_tick=a.newest_tick,
               belief=belief_from_pb(a.belief) if a.HasField("belief") else None, error=error)


def action_from_pb(a: Any) -> Action:
    return Action(session_id=a.session_id, timestamp=a.timestamp, tick=a.tick,
                  values=_f32(a.values), source=a.source, recorded=a.recorded)


# -- from JSON (HTTP) -------------------------------------------------------------------
def model_from_json(m: dict) -> ModelInfo:
    return ModelInfo(
        name=m["name"], is_default=m["is_default"], control_period_s=m["control_period_s"],
        latent_size=m["latent_size"], action_size=m["action_size"],
        action_low=_f32(m["action_low"]), action_high=_f32(m["action_high"]),
        sensors=tuple(SensorSpec(s["name"], s["kind"], tuple(s["shape"]), s["dtype"],
                                 s["decoded"]) for s in m["sensors"]),
        code_version=m["code_version"], manifest_sha256=m["manifest_sha256"],
        state_names=tuple(m.get("state_names", ())))


def session_from_json(s: dict) -> SessionInfo:
    return SessionInfo(**{k: s[k] for k in SessionInfo.__dataclass_fields__})


def belief_from_json(b: dict) -> Belief:
    return Belief(session_id=b["session_id"], timestamp=b["timestamp"], tick=b["tick"],
                  newest_tick=b["newest_tick"], predicted=b["predicted"], mean=_f32(b["mean"]),
                  var=_f32(b["var"]), decoded={k: _f32(v) for k, v in b["decoded"].items()},
                  reward=float(b["reward"]),
                  state=(StateEstimate(tuple(b["state"]["names"]), _f32(b["state"]["mean"]),
                                       _f32(b["state"]["var"])) if b.get("state") else None),
                  decoded_var={k: _f32(v) for k, v in b.get("decoded_var", {}).items()})


def ack_from_json(a: dict) -> Ack:
    belief = a.get("belief")
    return Ack(sequence=a["sequence"], session_id=a["session_id"], sensor=a["sensor"],
               tick=a["tick"], applied=a["applied"], newest_tick=a["newest_tick"],
               belief=belief_from_json(belief) if belief else None)


def action_from_json(a: dict) -> Action:
    return Action(session_id=a["session_id"], timestamp=a["timestamp"], tick=a["tick"],
                  values=_f32(a["values"]), source=a["source"], recorded=a["recorded"])
