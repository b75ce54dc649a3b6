"""The state head: a Gaussian decoder from a world model's features to the simulator state.

``StateHead(features [N, F]) -> (mean [N, S], var [N, S])`` in physical units. The network
works in normalised units (``u = (state - loc) / scale``, with ``loc`` and ``scale`` fitted
once on the prefill episodes and kept as buffers, so an export carries them) and predicts a
per-element mean and standard deviation ``softplus(raw) + min_std``.

By default the head is a *probe*: the agent trains it on detached samples of the filtered
beliefs with its own optimiser, so the world model's objective and gradients are exactly
those of the paper. ``joint=True`` adds its NLL to the world-model loss instead (an
auxiliary loss that shapes the latent space). The physical estimate under a belief, and its
variance, come from ``server.runtime.uncertainty`` (divided-difference sigma points through
this head); see docs/estimation.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from estimator.networks import mlp


def _opt(default: object, help: str) -> object:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class StateHeadConfig:
    """State head defaults (a small MLP; the probe trains with its own Adam)."""

    hidden: int = _opt(128, "state head: units per hidden layer")
    layers: int = _opt(2, "state head: hidden layers")
    act: str = _opt("elu", "state head: activation")
    min_std: float = _opt(0.01, "state head: minimum std, in units of the state's std")
    lr: float = _opt(1e-3, "state head: Adam learning rate")
    joint: bool = _opt(False, "train the state head through the world model as an auxiliary "
                       "loss (default: a probe on detached beliefs; the paper's objective)")
    weight: float = _opt(1.0, "weight of the auxiliary state loss when state.joint")


class StateHead(nn.Module):
    def __init__(self, feature_dim: int, names: tuple[str, ...],
                 config: StateHeadConfig = StateHeadConfig()):
        super().__init__()
        if not names:
            raise ValueError("a state head needs at least one state element name")
        if len(set(names)) != len(names):
            raise ValueError(f"state names must be unique, got {names}")
        self.names = tuple(names)
        self.config = config
        size = len(names)
        self.net = mlp(feature_dim, config.hidden, config.layers, 2 * size, config.act)
        self.register_buffer("loc", torch.zeros(size))
        self.register_buffer("scale", torch.ones(size))

    @property
    def state_dim(self) -> int:
        return len(self.names)

    def set_scaling(self, loc: Tensor, scale: Tensor) -> None:
        """Fit the normalisation (mean and std of the state over some episodes)."""
        if loc.shape != self.loc.shape or scale.shape != self.scale.shape:
            raise ValueError(f"scaling must have shape [{self.state_dim}], got "
                             f"{tuple(loc.shape)} and {tuple(scale.shape)}")
        if not bool((scale > 0).all()) or not bool(torch.isfinite(loc).all()):
            raise ValueError("state scaling needs finite means and positive stds")
        self.loc.copy_(loc)
        self.scale.copy_(scale)

    def normalised(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std ``[..., S]`` in normalised units."""
        raw_mean, raw_std = self.net(features).chunk(2, -1)
        return raw_mean, F.softplus(raw_std) + self.config.min_std

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance ``[..., S]`` in physical units."""
        mean, std = self.normalised(features)
        return self.loc + self.scale * mean, (self.scale * std).square()

    def nll(self, features: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Gaussian NLL per element ``[..., S]`` in normalised units, and the squared error
        of the mean, also normalised (for nRMSE against the fitted scale)."""
        if state.shape[-1] != self.state_dim:
            raise ValueError(f"state has {state.shape[-1]} elements, the head {self.state_dim}")
        target = (state - self.loc) / self.scale
        mean, std = self.normalised(features)
        err = (target - mean).square()
        nll = 0.5 * err / std.square() + std.log() + 0.5 * math.log(2 * math.pi)
        return nll, err


def fit_scaling(states: Tensor, min_std: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Mean and std (floored at ``min_std``) of ``states [N, S]``."""
    states = states.reshape(-1, states.shape[-1]).double()
    return states.mean(0).float(), states.std(0).clamp(min=min_std).float()
