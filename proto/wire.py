"""The service's resources as they travel, defined once: each dataclass mirrors one message of
``proto/vrkn/estimator/v1/estimator.proto`` (the same field names; ``PROTO`` names the
message). Everything else is derived from these: the protobuf conversion
(``proto.pb_codec``), the JSON conversion (``proto.json_codec``), the HTTP API's response
models and OpenAPI schemas (``server.http_schema``), the clients' types (``clients.types``)
and the session's answers (``server.session`` imports them). Adding a field: add it to the
proto message and here; ``tests/service/test_schema.py`` fails when the two disagree.

Annotations follow the vocabulary of ``proto.fields`` (``Floats``: a 1-D float32 array,
``Float32``: a float32 scalar, ``X | None``: a field with presence).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from proto.fields import Float32, Floats

Z90 = 1.6448536269514722  # half-width of a central 90% Gaussian interval, in std


class BeliefDetail(enum.IntEnum):
    """What a belief carries, as a request asks for it (the proto enum ``BeliefDetail``, the
    same numbers; ``BELIEF_DETAIL_`` + the name there). Each level adds to the one before;
    unspecified is FULL, which every belief carried before the levels existed. Over HTTP a
    level is its lowercase name (``"latent"``)."""

    UNSPECIFIED = 0
    LATENT = 1  # the latent mean and variance, and the reward head on the mean
    STATE = 2  # and the physical state estimate (a bundle with a state head)
    FULL = 3  # and the decoded estimates of the vector sensors with their variance

    @classmethod
    def of(cls, value: int | None) -> BeliefDetail:
        """The level a request asks for: UNSPECIFIED (or None) is FULL; ValueError for a
        number that is no level (a proto3 enum field carries any number)."""
        if value is None or value == cls.UNSPECIFIED:
            return cls.FULL
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"belief detail {value!r} is not one of "
                             f"{[d.name for d in cls if d]}") from None

    @property
    def state(self) -> bool:
        """Whether a belief of this level carries the state estimate."""
        return BeliefDetail.of(self) >= BeliefDetail.STATE

    @property
    def decoded(self) -> bool:
        """Whether a belief of this level carries the decoded estimates."""
        return BeliefDetail.of(self) >= BeliefDetail.FULL

    @property
    def json_name(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class SensorSpec:
    """A sensor of a model."""

    PROTO: ClassVar[str] = "SensorSpec"
    name: str
    kind: str  # "image" or "vector"
    shape: tuple[int, ...]
    dtype: str
    decoded: bool  # beliefs carry a decoded estimate of this sensor


@dataclass(frozen=True)
class ModelInfo:
    """A loaded model (bundle) a session can choose."""

    PROTO: ClassVar[str] = "ModelInfo"
    name: str
    is_default: bool
    control_period_s: float
    latent_size: int
    action_size: int
    action_low: Floats
    action_high: Floats
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
    """A session: its model, time axis and counters."""

    PROTO: ClassVar[str] = "Session"
    session_id: str
    model: str
    control_period_s: float
    history_window_s: float
    start_time: float | None  # t0 of tick 0; None: set by the first message
    newest_tick: int  # -1 before anything was recorded
    newest_time: float | None  # start of the newest tick
    accepted: dict[str, int] = field(default_factory=dict)  # messages accepted, by sensor
    refused: dict[str, int] = field(default_factory=dict)  # messages refused, by reason
    superseded: int = 0  # accepted, then replaced by a later message of the same tick
    actions: int = 0
    replayed_ticks: int = 0  # ticks recomputed because of late messages or actions
    idle_s: float = 0.0
    created: float = 0.0  # wall-clock time of creation (Unix seconds)

    @property
    def id(self) -> str:
        """``session_id`` (the name the server's session code uses)."""
        return self.session_id


@dataclass(frozen=True)
class StateEstimate:
    """The robot's physical state in physical units; a 90% interval is mean ± 1.645·sqrt(var)."""

    PROTO: ClassVar[str] = "StateEstimate"
    names: tuple[str, ...]
    mean: Floats  # [S]
    var: Floats  # [S]

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
    """The belief at a tick: the latent Gaussian, decoded estimates and the state."""

    PROTO: ClassVar[str] = "Belief"
    session_id: str
    timestamp: float | None  # the time asked for (None: the newest tick)
    tick: int
    newest_tick: int
    predicted: bool  # beyond the newest tick: predicted with the held action
    mean: Floats  # [L]
    var: Floats  # [L]
    decoded: dict[str, Floats]  # decoded estimates in sensor units (vector sensors; FULL)
    reward: Float32  # the reward head on the belief mean
    state: StateEstimate | None = None  # the physical state; None without a state head
    # or at BeliefDetail.LATENT
    decoded_var: dict[str, Floats] = field(default_factory=dict)  # their variances
    detail: BeliefDetail = BeliefDetail.UNSPECIFIED  # the level carried (as asked for)


@dataclass(frozen=True)
class Error:
    """Why a streamed message was refused."""

    PROTO: ClassVar[str] = "Error"
    code: str  # gRPC status name: NOT_FOUND, INVALID_ARGUMENT, OUT_OF_RANGE, ...
    reason: str  # short label, as in the `refused` counters
    message: str


@dataclass(frozen=True)
class Ack:
    """The answer to a sensor message."""

    PROTO: ClassVar[str] = "Ack"
    session_id: str
    sensor: str
    timestamp: float  # the message's timestamp
    tick: int
    applied: bool  # False: the tick already holds a later message of this sensor
    newest_tick: int
    sequence: int = 0  # the client's number, echoed
    error: Error | None = None  # set when a streamed message was refused
    belief: Belief | None = None  # when the message asked for it

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Action:
    """An action over a tick, in the bundle's units (what the robot applies)."""

    PROTO: ClassVar[str] = "Action"
    session_id: str
    timestamp: float
    tick: int
    values: Floats  # [A]
    source: str  # "policy" or "reported"
    recorded: bool  # False: the tick already holds a reported action, which stays


RESOURCES: tuple[type, ...] = (SensorSpec, ModelInfo, SessionInfo, StateEstimate, Belief,
                               Error, Ack, Action)

# -- the session's answers ---------------------------------------------------------------
ActionView = Action


def answer(ack: Ack, sequence: int, belief: Belief | None) -> Ack:
    """A message's ack as sent: the client's ``sequence`` echoed, with the belief it asked
    for (both transports)."""
    return dataclasses.replace(ack, sequence=sequence, belief=belief)
