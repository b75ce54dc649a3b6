"""The one interface every world model implements (VRKN and the RSSM family).

    observe(batch)                      -> filtered posterior states [B, T]
    loss(batch, generator)              -> (scalar loss, metrics)
    imagine(start, policy, horizon, g)  -> Imagination (features [H+1, N, F], actions)
    features(state)                     -> actor/critic input [..., feature_dim]
    feature_moments(state)              -> mean, variance of those features under the belief
    init_state(batch_size)              -> the state before any observation
    filter_step(state, action, sensors) -> the next posterior state (online acting)
    set_dropout(on)                     -> MC dropout on (training, imagination, collection)
                                           or off (evaluation, export)

States are NamedTuples of tensors with leading batch axes; ``flatten_states`` turns the
``[B, T]`` states of ``observe`` into ``[B*T]`` starts for imagination.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from estimator.batch import SensorBatch, SensorSpec, SequenceBatch
from estimator.networks import MLPConfig, mlp

State = Any  # a NamedTuple of tensors, model specific
Policy = Callable[[Tensor], Tensor]  # features [N, F] -> action [N, A]


class Imagination(NamedTuple):
    """A latent rollout: features[0] is the start; actions[h] leads from h to h+1."""

    features: Tensor  # [H+1, N, F]
    actions: Tensor  # [H, N, A]
    states: Any  # the model's State with leading [H+1, N]


def flatten_states(state: State) -> State:
    """Merge the two leading axes [B, T] of every field into one [B*T]."""
    return type(state)(*(x.reshape(-1, *x.shape[2:]) for x in state))


def stack_states(states: list[State], dim: int = 0) -> State:
    return type(states[0])(*(torch.stack(xs, dim) for xs in zip(*states, strict=True)))


def detach_states(state: State) -> State:
    return type(state)(*(x.detach() for x in state))


def mc_dropout(x: Tensor, p: float, active: bool, generator: torch.Generator | None) -> Tensor:
    """Inverted dropout with a fresh mask per call and per element, from ``generator``."""
    if not active or p <= 0.0:
        return x
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep.to(x.dtype) / (1.0 - p)


class WorldModel(nn.Module, abc.ABC):
    """Base class: sensors, action size, reward head and the shared loss pieces."""

    def __init__(self, specs: tuple[SensorSpec, ...], action_dim: int, feature_dim: int,
                 reward: MLPConfig):
        super().__init__()
        if action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {action_dim}")
        self.specs = tuple(specs)
        self.action_dim = action_dim
        self.feature_dim = feature_dim
        self.reward_head = mlp(feature_dim, reward.hidden, reward.layers, 1, reward.act)
        self.dropout_active = True

    def set_dropout(self, active: bool) -> None:
        """MC dropout on for training, imagination and collection; off for evaluation."""
        self.dropout_active = active

    def reward(self, features: Tensor) -> Tensor:
        """Predicted reward (the mean of a unit-variance Gaussian) ``[...]``."""
        return self.reward_head(features).squeeze(-1)

    def to_batch(self, data: dict[str, Tensor]) -> SequenceBatch:
        """Check an observation dict (docs/design.md §1, plus ``action``) against this model."""
        return SequenceBatch.from_dict(data, self.specs, self.action_dim,
                                       device=next(self.parameters()).device)

    def forward(self, batch: SequenceBatch, generator: torch.Generator | None = None
                ) -> tuple[Tensor, dict[str, float]]:
        """Calling the module computes the training loss (so torch.func can use it)."""
        return self.loss(batch, generator)

    @abc.abstractmethod
    def init_state(self, batch_size: int) -> State: ...

    @abc.abstractmethod
    def observe(self, batch: SequenceBatch, generator: torch.Generator | None = None) -> State:
        """Filtered posterior states ``[B, T]`` (no smoothing: these are what acting sees)."""

    def loss(self, batch: SequenceBatch, generator: torch.Generator | None = None
             ) -> tuple[Tensor, dict[str, float]]:
        loss, metrics, _ = self.loss_and_posterior(batch, generator)
        return loss, metrics

    @abc.abstractmethod
    def loss_and_posterior(self, batch: SequenceBatch, generator: torch.Generator | None = None
                           ) -> tuple[Tensor, dict[str, float], State]:
        """The training loss, its metrics, and the filtered posterior states ``[B, T]`` of
        the same pass (detached): what ``observe`` gives in training mode, without a second
        filter pass (Dreamer's imagination starts)."""

    @abc.abstractmethod
    def features(self, state: State) -> Tensor: ...

    @abc.abstractmethod
    def feature_moments(self, state: State) -> tuple[Tensor, Tensor]:
        """Mean and variance ``[..., F]`` of ``features`` under the belief ``state``
        (diagonal; zero variance for deterministic parts). ``features(state)`` is one
        sample of this distribution; the state head's uncertainty propagates it."""

    @abc.abstractmethod
    def imagine(self, start: State, policy: Policy, horizon: int,
                generator: torch.Generator | None = None) -> Imagination: ...

    @abc.abstractmethod
    def filter_step(self, state: State | None, action: Tensor | None,
                    sensors: tuple[SensorBatch, ...],
                    generator: torch.Generator | None = None) -> State:
        """One online step. ``state`` None means the first step (update only); otherwise
        ``action`` [B, A] is the action applied since ``state``. ``sensors`` hold one step:
        values ``[B, ...]``, valid ``[B]``."""


def step_sensors(sensors: tuple[SensorBatch, ...]) -> tuple[SensorBatch, ...]:
    """Give one-step sensor values ``[B, ...]`` a time axis of length 1."""
    return tuple(SensorBatch(s.value.unsqueeze(1), s.valid.unsqueeze(1),
                             None if s.mask is None else s.mask.unsqueeze(1)) for s in sensors)
