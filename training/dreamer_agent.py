"""The Dreamer agent (Hafner et al. 2020, V1) on any world model.

One ``update``: a world-model step on the batch; imagination of ``horizon`` steps from the
filtered (not smoothed) posteriors of the batch (all B*T, or ``imag_starts`` of them),
detached, with MC dropout on; an actor step that maximises the discounted lambda-returns by
backpropagating through the imagined dynamics (the world model's and critic's parameters
take no gradient); a critic step that regresses the detached returns.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from estimator.batch import SequenceBatch
from estimator.world_model import State, WorldModel, flatten_states
from training.actor_critic import Actor, Critic, discount_weights, lambda_returns
from training.agent import Agent, check_finite, frozen
from training.config import DreamerConfig


class DreamerAgent(Agent):
    def __init__(self, model: WorldModel, config: DreamerConfig | None = None):
        super().__init__()
        config = config or DreamerConfig()
        self.config = config
        self.model = model
        self.actor = Actor(model.feature_dim, model.action_dim, config)
        self.critic = Critic(model.feature_dim, config)
        c = config
        self.model_opt = torch.optim.Adam(model.parameters(), lr=c.model_lr, eps=c.eps)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr, eps=c.eps)
        self.value_opt = torch.optim.Adam(self.critic.parameters(), lr=c.value_lr, eps=c.eps)

    def optimisers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.model_opt, "actor": self.actor_opt, "value": self.value_opt}

    def actor_critic(self) -> tuple[nn.Module, ...]:
        return self.actor, self.critic

    # ------------------------------------------------------------------ training

    def update(self, batch: SequenceBatch, generator: torch.Generator,
               state: Tensor | None = None) -> dict[str, float]:
        metrics, posterior = self.model_update(batch, generator, state)
        with torch.no_grad():
            if state is not None and self.state_head is not None and not self.joint_state_head:
                metrics.update(self.state_probe_update(posterior, state))
            start = flatten_states(posterior)
            count = self.config.imag_starts
            total = start[0].shape[0]
            if 0 < count < total:
                keep = torch.randperm(total, generator=generator, device=start[0].device)[:count]
                start = type(start)(*(x.index_select(0, keep) for x in start))
        metrics.update(self.behaviour_update(start, generator))
        return metrics

    def model_update(self, batch: SequenceBatch, generator: torch.Generator,
                     state: Tensor | None = None) -> tuple[dict[str, float], State]:
        """The world-model step; returns its metrics and the (detached) filtered posterior
        of the same pass, the imagination starts and the state probe's input."""
        model, c = self.model, self.config
        model.set_dropout(True)
        loss, wm, posterior = model.loss_and_posterior(batch, generator)
        check_finite("world-model loss", loss, wm)
        aux, aux_metrics = self.joint_state_loss(batch, generator, state)
        if aux is not None:
            loss = loss + aux
        self.model_opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = self.step("world-model", self.model_opt, list(model.parameters()), c.grad_clip)
        if aux is not None:
            assert self.state_head is not None
            self.step("state-head", self.state_opt, list(self.state_head.parameters()),
                         c.grad_clip)
        out = {f"wm/{k}": v for k, v in wm.items()}
        out["wm/grad_norm"] = norm
        out.update(aux_metrics)
        return out, posterior

    def imagine_returns(self, start: State, generator: torch.Generator
                        ) -> tuple[Tensor, Tensor, Tensor]:
        """Imagined features ``[H+1, N, F]``, lambda-returns ``[H, N]`` and their weights."""
        c = self.config
        self.model.set_dropout(True)
        imag = self.model.imagine(start, lambda f: self.actor.sample(f, generator), c.horizon,
                                  generator)
        features = imag.features
        rewards = self.model.reward(features[1:])
        next_values = self.critic(features[1:])
        discounts = torch.full_like(rewards, c.discount)
        returns = lambda_returns(rewards, next_values, discounts, c.lam)
        return features, returns, discount_weights(discounts)

    def behaviour_update(self, start: State, generator: torch.Generator) -> dict[str, float]:
        c = self.config
        actor_params = list(self.actor.parameters())
        with frozen(self.model, self.critic):
            features, returns, weights = self.imagine_returns(start, generator)
            actor_loss = -(weights * returns).mean()
        check_finite("actor loss", actor_loss)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward(inputs=actor_params)
        actor_norm = self.step("actor", self.actor_opt, actor_params, c.grad_clip)

        value = self.critic(features[:-1].detach())
        value_loss = (weights * 0.5 * (value - returns.detach()).square()).mean()
        check_finite("value loss", value_loss)
        self.value_opt.zero_grad(set_to_none=True)
        value_loss.backward()
        value_norm = self.step("value", self.value_opt, list(self.critic.parameters()),
                                  c.grad_clip)
        with torch.no_grad():
            _, std = self.actor.distribution(features[:-1])
        return {"actor/loss": actor_loss.item(), "actor/grad_norm": actor_norm,
                "actor/std": std.mean().item(), "value/loss": value_loss.item(),
                "value/grad_norm": value_norm, "value/mean": value.mean().item(),
                "imag/return": returns.mean().item(),
                "imag/reward": self.model.reward(features[1:].detach()).mean().item()}

    # ------------------------------------------------------------------ acting

    def act(self, state: State, explore: bool, generator: torch.Generator) -> Tensor:
        features = self.model.features(state)
        if not explore:
            return self.actor.mode(features)
        action = self.actor.sample(features, generator)
        noise = torch.randn(action.shape, generator=generator, device=action.device)
        return (action + self.config.expl_noise * noise).clamp(-1.0, 1.0)
