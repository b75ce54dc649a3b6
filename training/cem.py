"""PlaNet's cross-entropy-method planner on any world model (docs/design.md §4.2).

For one start state: sample ``candidates`` action sequences of length ``horizon`` from a
diagonal Gaussian (mean 0, std 1 at first), clip them to [-1, 1], roll every candidate out
in imagination at once, score it by the sum of the predicted rewards of the imagined steps,
refit mean and std to the ``top_k`` best, and repeat ``iterations`` times. The plan's first
action (the final mean at step 0) is what the agent executes (model-predictive control:
the planner runs again at the next step).

The rollouts use the model as it is set: whether MC dropout is on is the caller's choice
(``model.set_dropout``), and latent transitions are sampled from ``generator`` as in
``model.imagine``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from estimator.world_model import State, WorldModel


def cem_plan(model: WorldModel, state: State, *, action_dim: int, horizon: int = 12,
             iterations: int = 10, candidates: int = 1000, top_k: int = 100,
             generator: torch.Generator | None = None) -> Tensor:
    """The first action ``[action_dim]`` of the CEM plan from ``state`` (batch size 1)."""
    _check_settings(model, action_dim, horizon, iterations, candidates, top_k)
    fields = tuple(state)
    if not fields or any(x.ndim < 1 or x.shape[0] != 1 for x in fields):
        shapes = [tuple(x.shape) for x in fields]
        raise ValueError(f"cem_plan plans for one start state (batch size 1); got fields "
                         f"of shapes {shapes}")
    device, dtype = fields[0].device, model.features(state).dtype
    start = type(state)(*(x.expand(candidates, *x.shape[1:]).contiguous() for x in fields))
    mean = torch.zeros(horizon, 1, action_dim, device=device, dtype=dtype)
    std = torch.ones(horizon, 1, action_dim, device=device, dtype=dtype)
    with torch.no_grad():
        for _ in range(iterations):
            noise = torch.randn(horizon, candidates, action_dim, generator=generator,
                                device=device, dtype=dtype)
            actions = (mean + std * noise).clamp(-1.0, 1.0)  # [H, N, A]
            returns = imagined_returns(model, start, actions, generator)
            # A candidate whose rollout diverged must never be chosen.
            returns = torch.nan_to_num(returns, nan=-torch.inf)
            elite = actions[:, returns.topk(top_k).indices]  # [H, K, A]
            mean = elite.mean(1, keepdim=True)
            std = elite.std(1, correction=0, keepdim=True)
    return mean[0, 0]


def imagined_returns(model: WorldModel, start: State, actions: Tensor,
                     generator: torch.Generator | None = None) -> Tensor:
    """Sum of predicted rewards ``[N]`` of open-loop action sequences ``[H, N, A]``."""
    horizon = actions.shape[0]
    calls = 0

    def policy(features: Tensor) -> Tensor:  # imagine asks once per step, in order
        nonlocal calls
        if calls >= horizon:
            raise RuntimeError(f"imagine asked for more than horizon={horizon} actions")
        action = actions[calls]
        calls += 1
        return action

    imagined = model.imagine(start, policy, horizon, generator)
    if calls != horizon:
        raise RuntimeError(f"imagine asked for {calls} actions, expected {horizon}")
    return model.reward(imagined.features[1:]).sum(0)


def _check_settings(model: WorldModel, action_dim: int, horizon: int, iterations: int,
                    candidates: int, top_k: int) -> None:
    model_dim = getattr(model, "action_dim", action_dim)
    if action_dim != model_dim:
        raise ValueError(f"action_dim={action_dim} but the model acts with {model_dim}")
    for name, value in (("action_dim", action_dim), ("horizon", horizon),
                        ("iterations", iterations), ("candidates", candidates)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 1 <= top_k <= candidates:
        raise ValueError(f"top_k must be in [1, candidates={candidates}], got {top_k}")
