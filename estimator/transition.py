"""VRKN transition network phi(mu+_t, a_t) -> (A_t, b_t, q_t) (paper Sec. 3.1, Fig. 3b).

Linear(L + |a| -> H) + act + MC dropout; GRUCell(H -> L) whose hidden (memory) input
is the posterior mean; MC dropout; Linear(L -> H) + act + MC dropout; Linear(H -> 3L)
split into A, b, q with the bounded activations of docs/design.md §3.1:
    A = 0.89 sigmoid(x + ln(0.8/0.09)) + 0.1   in (0.1, 0.99), A(0) = 0.9
    q = 0.099 sigmoid(x + ln(0.1)) + 0.001     in (0.001, 0.1), q(0) = 0.01
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from estimator.gaussian import LinearTransition
from estimator.networks import Bf16Autocast, activation
from estimator.world_model import mc_dropout

A_SCALE, A_MIN, A_SHIFT = 0.89, 0.1, math.log(0.8 / 0.09)
Q_SCALE, Q_MIN, Q_SHIFT = 0.099, 0.001, math.log(0.1)


def bounded_a(x: Tensor) -> Tensor:
    return A_SCALE * torch.sigmoid(x + A_SHIFT) + A_MIN


def bounded_q(x: Tensor) -> Tensor:
    return Q_SCALE * torch.sigmoid(x + Q_SHIFT) + Q_MIN


class TransitionNet(Bf16Autocast, nn.Module):
    """phi(mu+, a) with MC dropout (a fresh mask per call and per batch element)."""

    def __init__(self, latent: int, action_dim: int, hidden: int = 300, act: str = "relu",
                 dropout: float = 0.1):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.latent, self.action_dim, self.p = latent, action_dim, dropout
        self.inp = nn.Linear(latent + action_dim, hidden)
        self.gru = nn.GRUCell(hidden, latent)
        self.mid = nn.Linear(latent, hidden)
        self.out = nn.Linear(hidden, 3 * latent)
        self.act = activation(act)

    def forward(self, mean: Tensor, action: Tensor, dropout: bool = True,
                generator: torch.Generator | None = None) -> LinearTransition:
        """mean [N, L] (posterior mean mu+_t), action [N, A] -> LinearTransition [N, L]
        (the bounded activations in float32 under bf16 autocast)."""
        a, b, q = self.autocast_call(self._net, mean, action, dropout, generator).chunk(3, -1)
        return LinearTransition(bounded_a(a), b, bounded_q(q))

    def _net(self, mean: Tensor, action: Tensor, dropout: bool,
             generator: torch.Generator | None) -> Tensor:
        x = mc_dropout(self.act(self.inp(torch.cat([mean, action], -1))), self.p, dropout,
                       generator)
        x = mc_dropout(self.gru(x, mean), self.p, dropout, generator)
        x = mc_dropout(self.act(self.mid(x)), self.p, dropout, generator)
        return self.out(x)
