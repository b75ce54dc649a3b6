"""Dreamer's actor and critic, and lambda-returns as a pure function (Hafner et al. 2020).

Actor: an MLP from model features to a tanh-squashed Gaussian (Dreamer V1): raw mean m and
std s, mean = scale * tanh(m / scale), std = softplus(s + softplus^-1(init_std)) + min_std,
action = tanh(mean + std * eps). The evaluation action is tanh(mean).
Critic: an MLP from features to a scalar value.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from estimator.networks import mlp
from training.config import DreamerConfig


def lambda_returns(rewards: Tensor, next_values: Tensor, discounts: Tensor, lam: float
                   ) -> Tensor:
    """TD(lambda) returns over an imagined trajectory, all ``[H, ...]``.

    For a trajectory s_0 .. s_H with actions a_t: s_t -> s_{t+1}, ``rewards[t]`` is the
    reward of reaching s_{t+1}, ``next_values[t]`` = V(s_{t+1}) and ``discounts[t]`` the
    discount of that transition. Then, backwards from t = H-1,

        G_{H-1} = r_{H-1} + d_{H-1} V(s_H)
        G_t     = r_t + d_t ((1 - lam) V(s_{t+1}) + lam G_{t+1}),

    so lam = 0 gives one-step TD targets and lam = 1 the discounted return bootstrapped
    with V(s_H). ``G_t`` is the return target of V(s_t).
    """
    if not (rewards.shape == next_values.shape == discounts.shape) or rewards.ndim < 1:
        raise ValueError(f"rewards {tuple(rewards.shape)}, next_values "
                         f"{tuple(next_values.shape)} and discounts {tuple(discounts.shape)} "
                         "must share one shape [H, ...]")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    returns = []
    last = next_values[-1]
    for t in reversed(range(rewards.shape[0])):
        last = rewards[t] + discounts[t] * ((1.0 - lam) * next_values[t] + lam * last)
        returns.append(last)
    return torch.stack(returns[::-1])


def discount_weights(discounts: Tensor) -> Tensor:
    """Weights 1, d_0, d_0 d_1, ... ``[H, ...]`` (no gradient) for the losses at s_0 .. s_H-1."""
    ones = torch.ones_like(discounts[:1])
    return torch.cumprod(torch.cat([ones, discounts[:-1]], 0), 0).detach()


class Actor(nn.Module):
    def __init__(self, feature_dim: int, action_dim: int, config: DreamerConfig | None = None):
        super().__init__()
        config = config or DreamerConfig()
        self.action_dim = action_dim
        self.net = mlp(feature_dim, config.hidden, config.layers, 2 * action_dim, config.act)
        self.mean_scale = config.mean_scale
        self.min_std = config.min_std
        self.raw_init_std = math.log(math.expm1(config.init_std))

    def distribution(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std of the Gaussian before the tanh, ``[N, A]`` each."""
        raw_mean, raw_std = self.net(features).chunk(2, -1)
        mean = self.mean_scale * torch.tanh(raw_mean / self.mean_scale)
        std = F.softplus(raw_std + self.raw_init_std) + self.min_std
        return mean, std

    def sample(self, features: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A reparameterised action in (-1, 1)."""
        mean, std = self.distribution(features)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return torch.tanh(mean + std * eps)

    def mode(self, features: Tensor) -> Tensor:
        return torch.tanh(self.distribution(features)[0])

    def forward(self, features: Tensor) -> Tensor:
        return self.mode(features)


class Critic(nn.Module):
    def __init__(self, feature_dim: int, config: DreamerConfig | None = None):
        super().__init__()
        config = config or DreamerConfig()
        self.net = mlp(feature_dim, config.hidden, config.layers, 1, config.act)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features).squeeze(-1)
