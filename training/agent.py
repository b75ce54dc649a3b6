"""What the loop needs from an agent, and acting online with a filtered belief.

An agent owns a world model and its optimisers. ``update(batch, generator)`` trains on one
batch and returns metrics; ``act(state, explore, generator)`` maps filtered states
``[N]`` to actions ``[N, A]``. :class:`AgentPolicy` runs the model's online filter per
environment step (``model.filter_step``) on the observation dict and asks the agent for the
action.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from estimator.batch import SensorBatch, SequenceBatch
from estimator.world_model import State, WorldModel
from training.replay import Normalizer


class NonFiniteError(FloatingPointError):
    """A loss or gradient norm was NaN or infinite; the update was not applied."""


def check_finite(name: str, value: Tensor, metrics: Mapping[str, float] | None = None) -> None:
    if not torch.isfinite(value).all():
        detail = ""
        if metrics:
            detail = "; " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        raise NonFiniteError(f"{name} is {value.item() if value.numel() == 1 else value} "
                             f"(not finite){detail}")


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters of ``modules`` require no gradient inside the block (restored after)."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def clipped_step(name: str, optimiser: torch.optim.Optimizer, params: list[nn.Parameter],
                 clip: float) -> float:
    """Clip the gradient norm, refuse a non-finite one, step. Returns the norm."""
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
    check_finite(f"{name} gradient norm", norm)
    optimiser.step()
    return float(norm)


class Agent(nn.Module):
    """Base class: a world model plus whatever acts on its states."""

    model: WorldModel

    def update(self, batch: SequenceBatch, generator: torch.Generator) -> dict[str, float]:
        raise NotImplementedError

    def act(self, state: State, explore: bool, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def optimisers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def full_state(self) -> dict[str, Any]:
        """Parameters and optimiser states (tensors and plain data only)."""
        return {"modules": self.state_dict(),
                "optimisers": {k: o.state_dict() for k, o in self.optimisers().items()}}

    def load_full_state(self, state: Mapping[str, Any]) -> None:
        self.load_state_dict(state["modules"])
        for key, optimiser in self.optimisers().items():
            optimiser.load_state_dict(state["optimisers"][key])


def sensor_batch(model: WorldModel, obs: Mapping[str, np.ndarray], device: torch.device
                 ) -> tuple[SensorBatch, ...]:
    """One step of stacked observations ``[N, ...]`` as the model's sensors (no masks: the
    visibility mask is for training only)."""
    out = []
    for spec in model.specs:
        value = torch.as_tensor(np.asarray(obs[spec.name]), device=device)
        if spec.kind == "vector":
            value = value.float()
        if tuple(value.shape[1:]) != spec.shape:
            raise ValueError(f"observation {spec.name!r} has shape {tuple(value.shape)}, "
                             f"expected [N, {', '.join(map(str, spec.shape))}]")
        key = f"valid/{spec.name}"
        valid = (torch.as_tensor(np.asarray(obs[key]), device=device).bool() if key in obs
                 else torch.ones(value.shape[0], dtype=torch.bool, device=device))
        out.append(SensorBatch(value, valid, None))
    return tuple(out)


def select_rows(mask: Tensor, a: State, b: State) -> State:
    """Rows of ``a`` where ``mask`` [N] is True, else of ``b``."""
    return type(a)(*(torch.where(mask.view(-1, *([1] * (x.ndim - 1))), x, y)
                     for x, y in zip(a, b, strict=True)))


class AgentPolicy:
    """Acts in N environments: filter each new observation, then ask the agent.

    ``observer(obs, state)`` (optional) sees every filtered state, e.g. to record a video.
    """

    def __init__(self, agent: Agent, normalizer: Normalizer, device: torch.device,
                 explore: bool, generator: torch.Generator,
                 observer: Callable[[Mapping[str, np.ndarray], State], None] | None = None):
        self.agent, self.normalizer, self.device = agent, normalizer, device
        self.explore, self.generator, self.observer = explore, generator, observer
        self.reset()

    def reset(self) -> None:
        self.state: State | None = None
        self.prev_action: Tensor | None = None

    @torch.no_grad()
    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        model = self.agent.model
        sensors = sensor_batch(model, self.normalizer(dict(obs)), self.device)
        first = torch.as_tensor(np.asarray(obs["is_first"]), device=self.device).bool()
        if self.state is None or bool(first.all()):
            state = model.filter_step(None, None, sensors, self.generator)
        else:
            state = model.filter_step(self.state, self.prev_action, sensors, self.generator)
            if bool(first.any()):
                fresh = model.filter_step(None, None, sensors, self.generator)
                state = select_rows(first, fresh, state)
        self.state = state
        if self.observer is not None:
            self.observer(obs, state)
        action = self.agent.act(state, self.explore, self.generator)
        self.prev_action = action
        return action.float().cpu().numpy()


class RandomPolicy:
    """Uniform random actions in [-1, 1] (prefill and the random baseline)."""

    def __init__(self, action_dim: int, rng: np.random.Generator):
        self.action_dim, self.rng = action_dim, rng

    def reset(self) -> None:
        pass

    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        n = len(np.asarray(obs["is_first"]))
        return self.rng.uniform(-1.0, 1.0, (n, self.action_dim)).astype(np.float32)
