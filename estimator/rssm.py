"""The RSSM family behind the WorldModel interface (Hafner et al. 2019; paper Sec. 2.3, 4.1).

- RSSM: deterministic GRU path h (200) and stochastic s (30), hidden 300, ELU,
  std = softplus + 0.1, posterior q(s_t | h_t, e_t) from the embedding e_t: the filter-only
  inference of paper Eq. 3.
- Smooth RSSM (``smooth=True``): a backward GRU (300) over the embeddings feeds the
  posterior, so q(s_t | s_<t, o_>=t) conditions on the future (paper Eq. 4 with a NN).
- MCD-RSSM (``dropout=0.1``): MC dropout at three places of the prior path.
Embeddings: per-sensor features (zeros where missing) with the missing flag appended,
concatenated over sensors. Features for the actor: [s, h].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from estimator.batch import SensorBatch, SensorSpec, SequenceBatch
from estimator.gaussian import Belief
from estimator.kalman import kl_divergence, sample
from estimator.networks import Bf16Autocast, ConvConfig, MLPConfig, activation
from estimator.sensors import PreparedSensor, SensorStack, scatter_rows
from estimator.world_model import (
    Imagination,
    Policy,
    WorldModel,
    mc_dropout,
    stack_states,
    step_sensors,
)


@dataclass(frozen=True)
class RSSMConfig:
    """RSSM hyperparameters (docs/design.md §3.3); ``smooth``/``dropout`` select the variants."""

    deter: int = 200
    stoch: int = 30
    hidden: int = 300
    act: str = "elu"
    min_std: float = 0.1
    free_nats: float = 3.0
    reward_weight: float = 1.0
    smooth: bool = False  # Smooth RSSM: backward GRU over the embeddings
    backward_units: int = 300
    dropout: float = 0.0  # MCD-RSSM: 0.1
    conv: ConvConfig = field(default_factory=ConvConfig)
    vector: MLPConfig = field(default_factory=MLPConfig)
    reward: MLPConfig = field(default_factory=lambda: MLPConfig(hidden=300, layers=3, act="elu"))


class RSSMState(NamedTuple):
    mean: Tensor  # [..., S]
    std: Tensor  # [..., S]
    stoch: Tensor  # [..., S] a sample
    deter: Tensor  # [..., H]


class RSSM(Bf16Autocast, WorldModel):
    def __init__(self, specs: tuple[SensorSpec, ...], action_dim: int,
                 config: RSSMConfig = RSSMConfig()):
        super().__init__(specs, action_dim, config.stoch + config.deter, config.reward)
        self.config = config
        c = config
        self.sensors = SensorStack(self.specs, self.feature_dim, c.conv, c.vector)
        self.embed_dim = sum(d + 1 for d in self.sensors.feature_dims)  # + missing flags
        self.act = activation(c.act)
        self.img_in = nn.Linear(c.stoch + action_dim, c.hidden)
        self.cell = nn.GRUCell(c.hidden, c.deter)
        self.img_out = nn.Linear(c.deter, c.hidden)
        self.img_stats = nn.Linear(c.hidden, 2 * c.stoch)
        post_in = c.backward_units if c.smooth else self.embed_dim
        self.backward_rnn = nn.GRU(self.embed_dim, c.backward_units, batch_first=True) \
            if c.smooth else None
        self.obs_hidden = nn.Linear(c.deter + post_in, c.hidden)
        self.obs_stats = nn.Linear(c.hidden, 2 * c.stoch)

    # ------------------------------------------------------------------ pieces

    def _stats(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        mean, std = raw.chunk(2, -1)
        return mean, F.softplus(std) + self.config.min_std

    def _prior_net(self, stoch: Tensor, action: Tensor, deter: Tensor,
                   generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        p, on = self.config.dropout, self.dropout_active
        x = mc_dropout(self.act(self.img_in(torch.cat([stoch, action], -1))), p, on, generator)
        deter = mc_dropout(self.cell(x, deter), p, on, generator)
        x = mc_dropout(self.act(self.img_out(deter)), p, on, generator)
        return deter, self.img_stats(x)

    def _posterior_net(self, x: Tensor) -> Tensor:
        return self.obs_stats(self.act(self.obs_hidden(x)))

    def prior_step(self, state: RSSMState, action: Tensor, generator: torch.Generator | None
                   ) -> RSSMState:
        """p(s_t | s_{t-1}, a_{t-1}) through the deterministic path (dropout: MCD-RSSM);
        under bf16 autocast the networks' outputs return as float32."""
        deter, raw = self.autocast_call(self._prior_net, state.stoch, action, state.deter,
                                        generator)
        mean, std = self._stats(raw)
        return RSSMState(mean, std, sample(Belief(mean, std.square()), generator), deter)

    def posterior_step(self, prior: RSSMState, context: Tensor,
                       generator: torch.Generator | None) -> RSSMState:
        raw = self.autocast_call(self._posterior_net, torch.cat([prior.deter, context], -1))
        mean, std = self._stats(raw)
        return RSSMState(mean, std, sample(Belief(mean, std.square()), generator), prior.deter)

    def embed(self, prepared: tuple[PreparedSensor, ...], batch: int, steps: int) -> Tensor:
        """[B, T, embed_dim]: per-sensor features (zeros where missing) + missing flags."""
        parts = []
        for k, p in enumerate(prepared):
            dim = self.sensors.feature_dims[k]
            if p.index.numel() == 0:
                feats = torch.zeros(batch * steps, dim, device=p.valid.device)
            else:
                feats = scatter_rows(self.sensors.encode(k, p), p.index, batch * steps, 0.0)
            missing = (~p.valid).reshape(-1, 1).to(feats.dtype)
            parts += [feats, missing]
        return torch.cat(parts, -1).view(batch, steps, -1)

    def context(self, embedding: Tensor) -> Tensor:
        """What the posterior sees besides h_t: e_t, or the backward GRU over e_t:T-1."""
        if self.backward_rnn is None:
            return embedding
        out, _ = self.backward_rnn(embedding.flip(1))
        return out.flip(1)

    def _run(self, batch: SequenceBatch, prepared: tuple[PreparedSensor, ...],
             generator: torch.Generator | None) -> tuple[RSSMState, RSSMState]:
        b, t = batch.batch_size, batch.length
        contexts = self.context(self.embed(prepared, b, t)).unbind(1)
        actions = batch.action.unbind(1)
        state = self.init_state(b)
        priors, posts = [], []
        for step in range(t):
            zero_action = actions[step].new_zeros(actions[step].shape)
            prior = self.prior_step(state, actions[step - 1] if step else zero_action,
                                    generator)
            state = self.posterior_step(prior, contexts[step], generator)
            priors.append(prior)
            posts.append(state)
        return stack_states(priors, 1), stack_states(posts, 1)

    # ------------------------------------------------------------------ interface

    def init_state(self, batch_size: int) -> RSSMState:
        z = self.img_stats.weight.new_zeros
        c = self.config
        return RSSMState(z(batch_size, c.stoch), z(batch_size, c.stoch) + 1.0,
                         z(batch_size, c.stoch), z(batch_size, c.deter))

    def features(self, state: RSSMState) -> Tensor:
        return torch.cat([state.stoch, state.deter], -1)

    def feature_moments(self, state: RSSMState) -> tuple[Tensor, Tensor]:
        """The stochastic part is N(mean, std^2); the deterministic h has no variance."""
        return (torch.cat([state.mean, state.deter], -1),
                torch.cat([state.std.square(), torch.zeros_like(state.deter)], -1))

    def observe(self, batch: SequenceBatch, generator: torch.Generator | None = None
                ) -> RSSMState:
        prepared = self.sensors.prepare(batch.sensors, generator, dequantize=self.training)
        return self._run(batch, prepared, generator)[1]

    def loss_and_posterior(self, batch: SequenceBatch, generator: torch.Generator | None = None
                           ) -> tuple[Tensor, dict[str, float], RSSMState]:
        c = self.config
        b, t = batch.batch_size, batch.length
        prepared = self.sensors.prepare(batch.sensors, generator, dequantize=True)
        prior, post = self._run(batch, prepared, generator)
        flat = self.features(post).reshape(b * t, -1)
        obs_nll, per_sensor = self.sensors.reconstruction_nll(flat, prepared)
        reward_nll = 0.5 * (self.reward(flat) - batch.reward.reshape(-1)).square() \
            + 0.5 * math.log(2 * math.pi)
        recon = (obs_nll + c.reward_weight * reward_nll).mean()
        kl = kl_divergence(Belief(post.mean, post.std.square()),
                           Belief(prior.mean, prior.std.square()))  # [B, T]
        loss = recon + kl.clamp(min=c.free_nats).mean()
        metrics = {"loss": loss.item(), "kl": kl.mean().item(), "recon": recon.item(),
                   "reward_nll": reward_nll.mean().item(),
                   "prior_std": prior.std.mean().item()}
        for spec, nll in zip(self.specs, per_sensor, strict=True):
            metrics[f"nll/{spec.name}"] = nll.item()
        return loss, metrics, RSSMState(*(x.detach() for x in post))

    def filter_step(self, state: RSSMState | None, action: Tensor | None,
                    sensors: tuple[SensorBatch, ...],
                    generator: torch.Generator | None = None) -> RSSMState:
        """One online step. The Smooth RSSM's backward GRU sees only the current step
        online (the future is not available); that is the filtering use of its posterior."""
        seq = step_sensors(sensors)
        batch = seq[0].valid.shape[0]
        prepared = self.sensors.prepare(seq, generator, dequantize=False)
        context = self.context(self.embed(prepared, batch, 1))[:, 0]
        if state is None:
            state = self.init_state(batch)
            action = torch.zeros(batch, self.action_dim, device=context.device)
        elif action is None:
            raise ValueError("filter_step needs the action applied since the last state")
        return self.posterior_step(self.prior_step(state, action, generator), context,
                                   generator)

    def imagine(self, start: RSSMState, policy: Policy, horizon: int,
                generator: torch.Generator | None = None) -> Imagination:
        state, states, actions = start, [start], []
        for _ in range(horizon):
            action = policy(self.features(state))
            state = self.prior_step(state, action, generator)
            states.append(state)
            actions.append(action)
        stacked = stack_states(states)
        return Imagination(self.features(stacked), torch.stack(actions), stacked)
