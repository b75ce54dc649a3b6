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
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from estimator.batch import SensorBatch, SequenceBatch
from estimator.state_head import StateHead
from estimator.world_model import State, WorldModel, flatten_states
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


GradSync = Callable[[Sequence[nn.Parameter]], None]


class Agent(nn.Module):
    """Base class: a world model plus whatever acts on its states, and optionally a state
    head (``attach_state_head``) with its own optimiser.

    ``grad_sync`` (set by a distributed run: ``training.distributed``) averages the
    gradients of a parameter list over the ranks; every optimiser step goes through
    :meth:`step`, which calls it after the backward pass and before the clip."""

    model: WorldModel

    def __init__(self) -> None:
        super().__init__()
        self.state_head: StateHead | None = None
        self.grad_sync: GradSync | None = None

    def step(self, name: str, optimiser: torch.optim.Optimizer, params: list[nn.Parameter],
             clip: float) -> float:
        """:func:`clipped_step` on the gradients averaged over the ranks (when distributed)."""
        if self.grad_sync is not None:
            self.grad_sync(params)
        return clipped_step(name, optimiser, params, clip)

    def update(self, batch: SequenceBatch, generator: torch.Generator,
               state: Tensor | None = None) -> dict[str, float]:
        """One training step on ``batch``; ``state`` [B, T, S] (the privileged simulator
        state) trains the state head only, never the world model (unless ``joint``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ state head

    def attach_state_head(self, head: StateHead) -> None:
        self.state_head = head
        self.state_opt = torch.optim.Adam(head.parameters(), lr=head.config.lr)

    @property
    def joint_state_head(self) -> bool:
        return self.state_head is not None and self.state_head.config.joint

    def state_loss(self, posterior: State, state: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Mean normalised NLL of the head on the belief samples ``posterior`` [B, T]."""
        assert self.state_head is not None
        features = self.model.features(flatten_states(posterior))
        target = state.reshape(-1, state.shape[-1]).to(features)
        nll, err = self.state_head.nll(features, target)
        return nll.mean(), {"state/nll": nll.mean().item(),
                            "state/nrmse": err.mean(0).sqrt().mean().item()}

    def state_probe_update(self, posterior: State, state: Tensor) -> dict[str, float]:
        """Train the head on detached filtered beliefs: the world model sees no gradient."""
        posterior = type(posterior)(*(x.detach() for x in posterior))
        with torch.enable_grad():
            loss, metrics = self.state_loss(posterior, state)
        check_finite("state-head loss", loss, metrics)
        self.state_opt.zero_grad(set_to_none=True)
        loss.backward()
        assert self.state_head is not None
        self.step("state-head", self.state_opt, list(self.state_head.parameters()), 100.0)
        return metrics

    def joint_state_loss(self, batch: SequenceBatch, generator: torch.Generator,
                         state: Tensor | None) -> tuple[Tensor | None, dict[str, float]]:
        """The auxiliary loss (``joint``): the head's NLL on filtered beliefs with gradients
        into the world model. None when the head is a probe or no state is given."""
        if state is None or not self.joint_state_head:
            return None, {}
        assert self.state_head is not None
        loss, metrics = self.state_loss(self.model.observe(batch, generator), state)
        self.state_opt.zero_grad(set_to_none=True)
        return self.state_head.config.weight * loss, metrics

    def all_optimisers(self) -> dict[str, torch.optim.Optimizer]:
        out = dict(self.optimisers())
        if self.state_head is not None:
            out["state"] = self.state_opt
        return out

    def act(self, state: State, explore: bool, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def actor_critic(self) -> tuple[nn.Module, ...]:
        """The behaviour networks besides the world model (none for a planner)."""
        return ()

    def optimisers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def full_state(self) -> dict[str, Any]:
        """Parameters and optimiser states (tensors and plain data only)."""
        return {"modules": self.state_dict(),
                "optimisers": {k: o.state_dict() for k, o in self.all_optimisers().items()}}

    def load_full_state(self, state: Mapping[str, Any]) -> None:
        self.load_state_dict(state["modules"])
        for key, optimiser in self.all_optimisers().items():
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
